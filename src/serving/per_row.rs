//! Several adapters on one base, each sequence of a batch with its own (challenge 2, t10).
//!
//! Serving many fine-tuned variants of one model does not need many models: the base is shared
//! and only the small adapters differ. Punica (Chen et al. 2023) and S-LoRA (Sheng et al. 2023)
//! batch requests for different adapters together: the base matmul runs once for the whole
//! batch, and each row gathers its own A and B for the low-rank part. [`PerRowLinear`] is that
//! layer: the base, the adapters stacked (padded to the largest rank with zeros, which add
//! nothing), and which adapter each row of the batch uses. Its low-rank part is t10's
//! [`crate::tasks::t10_multi_lora::per_row_lora`]; a model's linear layer holds one in its
//! [`LinearSlot::Custom`] while a mixed batch is served ([`PerRowServing::set_per_row`]).
//!
//! May use: `compute` (its matmul), `lora`, tasks t01-t10.

use std::any::Any;

use candle_core::{DType, Device, Tensor};

use crate::error::{LoraError, Result};
use crate::lora::model::LoraModel;
use crate::lora::param::Param;
use crate::lora::slot::{CustomLinear, LinearSlot};
use crate::tasks::t01_lora_layer::LoraLayer;
use crate::tasks::t10_multi_lora::{per_row_lora, AdapterSet, NamedAdapter};

/// A frozen base layer plus several adapters, one chosen per row of the batch.
#[derive(Clone, Debug)]
pub struct PerRowLinear {
    /// The base layer, without an adapter (plain, or another kind such as a quantized one).
    base: Box<LinearSlot>,
    /// A of every adapter, [K, r_max, in]; an adapter of smaller rank is padded with zero rows.
    a: Tensor,
    /// B of every adapter, [K, out, r_max], padded with zero columns.
    b: Tensor,
    /// Each adapter's scaling, [K].
    scale: Tensor,
    /// The adapter of each row, [batch] u32 indices into K. A row without an adapter points at
    /// an all-zero adapter.
    rows: Tensor,
    /// The same, as host values, for [`PerRowLinear::forward`]'s graph-free CPU path: A and B of
    /// every adapter in f32 (row-major, as `a` and `b`), each one's scaling, each row's index.
    host: std::sync::Arc<HostAdapters>,
}

/// The stacked adapters as plain f32 vectors (see [`PerRowLinear`]).
#[derive(Debug)]
struct HostAdapters {
    a: Vec<f32>,
    b: Vec<f32>,
    scale: Vec<f32>,
    rows: Vec<u32>,
    r_max: usize,
}

impl PerRowLinear {
    /// Stack `adapters` over `base` (an adapter-free slot); `rows[i]` is the index into
    /// `adapters` of row i, or `None` for the base alone.
    pub fn new(base: LinearSlot, adapters: &[&LoraLayer], rows: &[Option<usize>]) -> Result<Self> {
        if base.adapter().is_some() || base.kind::<PerRowLinear>().is_some() {
            return Err(LoraError::config("per-row layer", "the base slot must not carry an adapter"));
        }
        let (in_f, out_f) = base.in_out_features();
        let device = base.device().clone();
        let r_max = adapters.iter().map(|l| l.rank()).max().unwrap_or(1);
        let (mut a_all, mut b_all, mut scales) = (Vec::new(), Vec::new(), Vec::new());
        for l in adapters {
            if (l.in_features(), l.out_features()) != (in_f, out_f) {
                return Err(LoraError::shape(
                    "adapter for the per-row layer",
                    format!("in {in_f}, out {out_f}"),
                    &[l.out_features(), l.in_features()],
                ));
            }
            let pad = r_max - l.rank();
            let a = l.a().tensor().to_dtype(DType::F32)?;
            let b = l.b().tensor().to_dtype(DType::F32)?;
            a_all.push(if pad > 0 {
                Tensor::cat(&[&a, &Tensor::zeros((pad, in_f), DType::F32, &device)?], 0)?
            } else {
                a
            });
            b_all.push(if pad > 0 {
                Tensor::cat(&[&b, &Tensor::zeros((out_f, pad), DType::F32, &device)?], 1)?
            } else {
                b
            });
            scales.push(l.scaling() as f32);
        }
        // The last entry is the "no adapter" one: zeros.
        a_all.push(Tensor::zeros((r_max, in_f), DType::F32, &device)?);
        b_all.push(Tensor::zeros((out_f, r_max), DType::F32, &device)?);
        scales.push(0.0);
        let none = adapters.len() as u32;
        let mut idx = Vec::with_capacity(rows.len());
        for r in rows {
            match r {
                Some(k) if *k < adapters.len() => idx.push(*k as u32),
                Some(k) => {
                    return Err(LoraError::config("per-row adapters", format!("row adapter {k} of {}", adapters.len())))
                }
                None => idx.push(none),
            }
        }
        let (a, b) = (Tensor::stack(&a_all, 0)?, Tensor::stack(&b_all, 0)?);
        let host = HostAdapters {
            a: a.flatten_all()?.to_vec1()?,
            b: b.flatten_all()?.to_vec1()?,
            scale: scales.clone(),
            rows: idx.clone(),
            r_max,
        };
        Ok(PerRowLinear {
            base: Box::new(base),
            a,
            b,
            scale: Tensor::new(scales, &device)?,
            rows: Tensor::new(idx, &device)?,
            host: std::sync::Arc::new(host),
        })
    }

    /// `base(x) + per_row_lora(x)` for `x` [batch, seq, in] with one adapter per row.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.dim(0)?;
        if x.rank() != 3 || batch != self.rows.dim(0)? {
            return Err(LoraError::shape("per-row layer input", format!("[{}, seq, in]", self.rows.dim(0)?), x.dims()));
        }
        let y = self.base.forward(x, false)?;
        // With `--features exercises` the learner's `per_row_lora` always runs, as every task's
        // code does in the models.
        let update = if cfg!(not(feature = "exercises")) && x.device().is_cpu() && !x.track_op() {
            self.per_row_lora_cpu(x)?
        } else {
            per_row_lora(&x.to_dtype(DType::F32)?, &self.a, &self.b, &self.scale, &self.rows)?
        };
        Ok((y + update.to_dtype(x.dtype())?)?)
    }

    /// t10's `per_row_lora` without the graph, on the CPU: each row multiplied by its own
    /// adapter's A and B where they lie, not gathered into [batch, r, in] copies first. For
    /// serving (no gradient): decoding a token calls this for every adapted layer, and the
    /// gathers and batched matmuls of eight one-token rows cost more than the base layer.
    fn per_row_lora_cpu(&self, x: &Tensor) -> Result<Tensor> {
        use crate::compute::matmul::{matmul, Mat};
        let (batch, seq, in_f) = x.dims3()?;
        let out_f = self.base.in_out_features().1;
        let h = &self.host;
        let r = h.r_max;
        let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut y = vec![0f32; batch * seq * out_f];
        let mut z = vec![0f32; seq * r];
        for (row, &k) in h.rows.iter().enumerate() {
            let (k, s) = (k as usize, h.scale[k as usize]);
            if s == 0.0 {
                continue;
            }
            let a = &h.a[k * r * in_f..(k + 1) * r * in_f];
            let b = &h.b[k * out_f * r..(k + 1) * out_f * r];
            let xr = &xs[row * seq * in_f..(row + 1) * seq * in_f];
            // z = s x A^T [seq, r], then y = z B^T [seq, out].
            matmul(&mut z, r, (seq, r, in_f), Mat::rows(xr, in_f), Mat::rows(a, in_f).t(), false, false);
            z.iter_mut().for_each(|v| *v *= s);
            let yr = &mut y[row * seq * out_f..(row + 1) * seq * out_f];
            matmul(yr, out_f, (seq, out_f, r), Mat::rows(&z, r), Mat::rows(b, r).t(), false, false);
        }
        Ok(Tensor::from_vec(y, (batch, seq, out_f), x.device())?)
    }

    /// The base slot.
    pub fn base(&self) -> &LinearSlot {
        &self.base
    }
}

impl CustomLinear for PerRowLinear {
    fn forward(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        PerRowLinear::forward(self, x)
    }

    fn adapter(&self) -> Option<&LoraLayer> {
        None
    }

    fn adapter_mut(&mut self) -> Option<&mut LoraLayer> {
        None
    }

    fn set_adapter(&mut self, _lora: LoraLayer) -> Result<()> {
        Err(LoraError::config("slot", "serves several adapters per row; clear them (AdapterSet::clear) first"))
    }

    fn take_adapter(&mut self) -> Option<LoraLayer> {
        None
    }

    fn base_weight(&self) -> Result<Tensor> {
        self.base.base_weight()
    }

    fn base_bias(&self) -> Option<&Tensor> {
        self.base.base_bias()
    }

    fn in_out_features(&self) -> (usize, usize) {
        self.base.in_out_features()
    }

    fn device(&self) -> &Device {
        self.base.device()
    }

    fn without_adapter(&self) -> Result<LinearSlot> {
        Ok((*self.base).clone())
    }

    /// A layer serving several adapters counts as its base.
    fn named_params(&self) -> Vec<(String, Param)> {
        self.base.named_params()
    }

    fn why_not_plain(&self) -> Option<&'static str> {
        Some("serves several adapters per row; clear them (AdapterSet::clear)")
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn box_clone(&self) -> Box<dyn CustomLinear> {
        Box::new(self.clone())
    }
}

/// Serving a mixed batch from an [`AdapterSet`]: each row of the batch with its own adapter.
pub trait PerRowServing {
    /// Serve a batch whose row i uses adapter `rows[i]` (`None`: the base alone): every module
    /// that any of them adapts becomes a per-row layer. `set_active` or `clear` ends it.
    fn set_per_row(&mut self, model: &mut dyn LoraModel, rows: &[Option<&str>]) -> Result<()>;
}

impl PerRowServing for AdapterSet {
    fn set_per_row(&mut self, model: &mut dyn LoraModel, rows: &[Option<&str>]) -> Result<()> {
        let mut names: Vec<&str> = rows.iter().flatten().copied().collect();
        names.sort();
        names.dedup();
        let adapters: Vec<&NamedAdapter> = names
            .iter()
            .map(|n| self.get(n).ok_or_else(|| LoraError::config("adapter", format!("`{n}` is not loaded"))))
            .collect::<Result<_>>()?;
        // Every new slot is built first, so that an error changes nothing.
        let mut new_slots = Vec::new();
        for (module, slot) in model.linears() {
            let base = slot.without_adapter()?;
            // The adapters that adapt this module, and each row's index among them.
            let here: Vec<(usize, &LoraLayer)> =
                adapters.iter().enumerate().filter_map(|(k, a)| a.layers.get(&module).map(|l| (k, l))).collect();
            if here.is_empty() {
                new_slots.push(base);
                continue;
            }
            let layers: Vec<&LoraLayer> = here.iter().map(|(_, l)| *l).collect();
            let row_idx: Vec<Option<usize>> = rows
                .iter()
                .map(|r| {
                    r.and_then(|n| names.iter().position(|m| *m == n))
                        .and_then(|k| here.iter().position(|(j, _)| *j == k))
                })
                .collect();
            new_slots.push(LinearSlot::Custom(Box::new(PerRowLinear::new(base, &layers, &row_idx)?)));
        }
        // No adapter is active while rows choose their own.
        self.clear(model)?;
        for ((_, slot), new) in model.linears_mut().into_iter().zip(new_slots) {
            *slot = new;
        }
        Ok(())
    }
}
