//! Fused training ops: one candle op each, with the backward written by hand.
//!
//! Built from candle's small ops, an RMSNorm is five graph nodes, an attention layer a dozen,
//! and candle's autograd keeps every node's inputs alive until the backward pass has run, and
//! computes gradients for constants (the causal mask, RoPE tables, frozen norm weights). At
//! SmolLM2's shape that is most of a 6 GB training step. Each op here is a single node that keeps
//! only its inputs and output, recomputes what is cheap (attention probabilities, the LoRA
//! bottleneck `x A^T`, the output head's logits), and returns a gradient only for inputs that
//! track one.
//!
//! The ops run on the CPU in f32 and f64. [`crate::compute::ops`] chooses them when the inputs allow and
//! falls back to the composed candle version otherwise (CUDA, half precision); the two are
//! checked equal, and each fused op against finite differences, in `tests/fused_ops.rs`.

pub use crate::compute::bf16::Product;
pub use crate::compute::matmul::Float;
pub(crate) use crate::compute::matmul::{matmul, Mat};
use candle_core::{CpuStorage, DType, Layout, Storage, Tensor};

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
mod exp;
pub mod frozen_linear;
pub mod lora_linear;
pub mod norm;
pub mod residual_linear;
pub mod rope;

/// Set by [`set_enabled`]: the fused ops are off and every op takes its composed version.
static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turn the fused ops off (`false`) or back on, for the whole process: every op then takes its
/// composed candle version, as it does on a GPU or in bf16. For checking those fallbacks against
/// the fused ops on the CPU (`tests/composed_paths.rs`); training never needs it.
pub fn set_enabled(enabled: bool) {
    DISABLED.store(!enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the fused ops can take these tensors: on the CPU, all f32 or all f64, and not
/// switched off by [`set_enabled`].
pub fn usable(tensors: &[&Tensor]) -> bool {
    if DISABLED.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    let Some(first) = tensors.first() else { return false };
    let dtype = first.dtype();
    matches!(dtype, DType::F32 | DType::F64) && tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == dtype)
}

/// [`usable`] for ops that hold a frozen weight: the tensors as [`usable`] asks, and the weight
/// of their dtype or, beside f32 tensors, bf16 (the `--bf16` base on the CPU, multiplied by
/// [`crate::compute::bf16`]).
pub(crate) fn usable_with_weight(tensors: &[&Tensor], weight: &Tensor) -> bool {
    usable(tensors)
        && weight.device().is_cpu()
        && (weight.dtype() == tensors[0].dtype() || (weight.dtype() == DType::BF16 && tensors[0].dtype() == DType::F32))
}

/// The contiguous elements of a CPU storage under `layout`.
pub(crate) fn storage_slice<'a, T: Float>(s: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fused op: input is not contiguous"),
    }
}

/// Run `f` on the elements of a contiguous CPU tensor.
pub(crate) fn with_slice<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else { candle_core::bail!("fused op: tensor is not on the CPU") };
    Ok(f(storage_slice(s, layout)?))
}

/// A CPU tensor of `shape` from `data`.
pub(crate) fn tensor<T: Float>(data: Vec<T>, shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

/// `storage` as an owned CpuStorage of T (the output of a `cpu_fwd`).
pub(crate) fn owned<T: Float>(data: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(data)
}

/// Dispatch a generic kernel on the storage's dtype (f32 or f64).
macro_rules! by_dtype {
    ($storage:expr, $f:ident ( $($arg:expr),* )) => {
        match $storage.dtype() {
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            candle_core::DType::F64 => $f::<f64>($($arg),*),
            dt => candle_core::bail!("fused op: dtype {dt:?} (only f32 and f64)"),
        }
    };
}
pub(crate) use by_dtype;

/// A frozen weight [out, in] held inside a fused op: a dense contiguous tensor, or a quantized
/// one (QLoRA, t09) that the op dequantizes where it uses it, in the forward and again in the
/// backward, so that only the quantized form stays alive between the two.
#[derive(Clone, Debug)]
pub enum FrozenWeight {
    Dense(Tensor),
    Quantized(std::sync::Arc<dyn crate::compute::quantized::QuantizedWeight>),
}

impl FrozenWeight {
    /// A dense weight, detached and made contiguous.
    pub(crate) fn dense_from(w: &Tensor) -> candle_core::Result<Self> {
        Ok(FrozenWeight::Dense(w.detach().contiguous()?))
    }

    /// (out, in).
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            FrozenWeight::Dense(w) => w.dims2(),
            FrozenWeight::Quantized(q) => Ok(q.dims()),
        }
    }

    /// `c (+)= x W^T` ([`Product::XWt`], `c` [m, out]) or `x W` ([`Product::XW`], `c` [m, in]),
    /// `x` row-major. A bf16 weight beside f32 activations is multiplied as it is stored
    /// ([`crate::compute::bf16`]); any other is read as T (dequantized if quantized).
    pub(crate) fn matmul_into<T: Float>(
        &self,
        c: &mut [T],
        x: &[T],
        m: usize,
        product: Product,
        accumulate: bool,
    ) -> candle_core::Result<()> {
        let (out_f, in_f) = self.dims()?;
        if let (FrozenWeight::Dense(w), DType::F32) = (self, T::DTYPE) {
            if w.dtype() == DType::BF16 {
                let (storage, layout) = w.storage_and_layout();
                let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("fused op: the weight is not on the CPU") };
                let Some((start, end)) = layout.contiguous_offsets() else {
                    candle_core::bail!("fused op: the weight is not contiguous")
                };
                let w = &cpu.as_slice::<half::bf16>()?[start..end];
                // T is f32 (checked above), so these casts only change the name of the type.
                let (c, x) = (as_f32_mut(c), as_f32(x));
                crate::compute::bf16::matmul(
                    c,
                    product.n_k((out_f, in_f)).0,
                    x,
                    w,
                    (m, out_f, in_f),
                    product,
                    accumulate,
                );
                return Ok(());
            }
        }
        with_slice::<T, _>(&self.dense(T::DTYPE)?, |w| {
            let (n, k, b) = match product {
                Product::XWt => (out_f, in_f, Mat::rows(w, in_f).t()),
                Product::XW => (in_f, out_f, Mat::rows(w, in_f)),
            };
            matmul(c, n, (m, n, k), Mat::rows(x, k), b, accumulate, true)
        })
    }

    /// This bf16 weight prepared once for each of `products` ([`crate::compute::bf16::pack_many`]:
    /// packed for the kernel or widened for the portable path), when it is one and `T` is f32;
    /// else `None`.
    pub(crate) fn pack_bf16<T: Float>(
        &self,
        products: &[Product],
    ) -> candle_core::Result<Option<Vec<crate::compute::bf16::Packed>>> {
        let FrozenWeight::Dense(w) = self else { return Ok(None) };
        if w.dtype() != DType::BF16 || T::DTYPE != DType::F32 {
            return Ok(None);
        }
        let dims = w.dims2()?;
        let (storage, layout) = w.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else { candle_core::bail!("fused op: the weight is not on the CPU") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused op: the weight is not contiguous")
        };
        Ok(Some(crate::compute::bf16::pack_many(&cpu.as_slice::<half::bf16>()?[start..end], dims, products)))
    }

    /// Whether this is a dense bf16 weight (multiplied by [`crate::compute::bf16`] beside f32).
    fn is_bf16(&self) -> bool {
        matches!(self, FrozenWeight::Dense(w) if w.dtype() == DType::BF16)
    }

    /// `x W^T` or `x W` for f32 `x` [..., k] when this is a bf16 weight, by the bf16 kernel;
    /// `None` otherwise (the caller multiplies in its own way).
    pub(crate) fn bf16_times(&self, x: &Tensor, product: Product) -> candle_core::Result<Option<Tensor>> {
        if !self.is_bf16() || x.dtype() != DType::F32 || !x.device().is_cpu() {
            return Ok(None);
        }
        let (out_f, in_f) = self.dims()?;
        let (n, k) = product.n_k((out_f, in_f));
        if x.dims().last() != Some(&k) {
            candle_core::bail!("bf16 matmul: expected x [..., {k}] for a [{out_f}, {in_f}] weight, got {:?}", x.dims());
        }
        let m = x.elem_count() / k.max(1);
        let mut y = vec![0f32; m * n];
        with_slice::<f32, _>(x, |x| self.matmul_into(&mut y, x, m, product, false))??;
        let mut dims = x.dims().to_vec();
        *dims.last_mut().expect("x has a last dim") = n;
        tensor(y, &dims).map(Some)
    }

    /// The weight as a contiguous CPU tensor of `dtype` (dequantized if quantized).
    pub fn dense(&self, dtype: DType) -> candle_core::Result<Tensor> {
        match self {
            FrozenWeight::Dense(w) => w.to_dtype(dtype),
            FrozenWeight::Quantized(q) => q
                .dequantize(&candle_core::Device::Cpu)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                .to_dtype(dtype),
        }
    }
}

/// `s` as f32: only called where `T::DTYPE` is f32, so T is f32.
pub(crate) fn as_f32<T: Float>(s: &[T]) -> &[f32] {
    assert_eq!(T::DTYPE, DType::F32);
    // SAFETY: T is f32 (asserted), so the slice is reinterpreted as itself.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) }
}

/// [`as_f32`] for a mutable slice.
pub(crate) fn as_f32_mut<T: Float>(s: &mut [T]) -> &mut [f32] {
    assert_eq!(T::DTYPE, DType::F32);
    // SAFETY: as in `as_f32`.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) }
}

/// `c (+)= x W^T` or `x W` with a weight packed by [`FrozenWeight::pack_bf16`] (T is f32 there).
pub(crate) fn matmul_packed<T: Float>(
    c: &mut [T],
    ldc: usize,
    x: &[T],
    m: usize,
    w: &crate::compute::bf16::Packed,
    accumulate: bool,
) {
    crate::compute::bf16::matmul_packed(as_f32_mut(c), ldc, as_f32(x), m, w, accumulate)
}
