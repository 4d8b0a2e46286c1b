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

use candle_core::{CpuStorage, DType, Layout, Storage, Tensor, WithDType};
use gemm::Parallelism;

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod frozen_linear;
pub mod lora_linear;
pub mod norm;
pub mod residual_linear;
pub mod rope;

/// The element types the fused kernels are written for.
pub trait Float: WithDType + num_traits::Float + std::iter::Sum + Send + Sync + 'static {}
impl Float for f32 {}
impl Float for f64 {}

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

/// A read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: isize,
    pub cs: isize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Mat { data, rs: cols as isize, cs: 1 }
    }

    /// Row-major with rows `stride` apart (a column block of a wider matrix).
    pub fn strided(data: &'a [T], stride: usize) -> Self {
        Mat { data, rs: stride as isize, cs: 1 }
    }

    /// The transpose, for free: swap the strides.
    pub fn t(self) -> Self {
        Mat { data: self.data, rs: self.cs, cs: self.rs }
    }
}

/// `c [m, n] = a [m, k] b [k, n]`, or `c += a b` with `accumulate`; `c` is row-major with rows
/// `ldc` apart. `parallel` lets gemm use candle's thread count (off inside rayon tasks).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Float>(
    c: &mut [T],
    ldc: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the last element each operand touches must be inside its slice.
    let last = |x: Mat<T>, r: usize, q: usize| {
        (r.saturating_sub(1) as isize * x.rs + q.saturating_sub(1) as isize * x.cs) as usize
    };
    assert!(k == 0 || last(a, m, k) < a.data.len(), "matmul: lhs out of bounds");
    assert!(k == 0 || last(b, k, n) < b.data.len(), "matmul: rhs out of bounds");
    assert!((m - 1) * ldc + n <= c.len(), "matmul: dst out of bounds");
    let threads = threads();
    let parallelism = if parallel && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let (zero, one) = (T::zero(), T::one());
    // SAFETY: the asserts above keep every access inside the three slices; `c` does not alias
    // `a` or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            if accumulate { one } else { zero },
            one,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// candle's thread count, asked once: each call of `get_num_threads` may read /proc/cpuinfo
/// (see [`crate::compute::threads`]).
fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

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
    pub fn dense_from(w: &Tensor) -> candle_core::Result<Self> {
        Ok(FrozenWeight::Dense(w.detach().contiguous()?))
    }

    /// (out, in).
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            FrozenWeight::Dense(w) => w.dims2(),
            FrozenWeight::Quantized(q) => Ok(q.dims()),
        }
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
