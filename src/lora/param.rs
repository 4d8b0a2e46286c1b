//! `Param`: candle's version of PyTorch's `requires_grad`.
//!
//! candle tracks gradients for `Var`s and for tensors computed from them; a plain `Tensor` is a
//! constant. So "freezing" a weight is a property of how it is held, not a flag: a frozen weight is
//! a `Tensor`, a trainable one a `Var`. `Param` holds either, and switching costs no copy when
//! freezing (a `Var`'s storage is shared with its detached tensor).

use candle_core::{Tensor, Var};

use crate::error::Result;

// ANCHOR: param
/// A model weight that is either frozen (a constant) or trainable (a `Var`).
#[derive(Clone, Debug)]
pub enum Param {
    /// A constant: no gradient is computed for it, no optimizer sees it.
    Frozen(Tensor),
    /// A trainable weight: gradients flow to it and optimizers update it in place.
    Trainable(Var),
}
// ANCHOR_END: param

impl Param {
    /// A frozen weight. The tensor is detached, so even a `Var`'s tensor passed here stops
    /// receiving gradients.
    pub fn frozen(tensor: &Tensor) -> Self {
        Param::Frozen(tensor.detach())
    }

    /// A trainable weight holding a copy of `tensor`.
    pub fn trainable(tensor: &Tensor) -> Result<Self> {
        Ok(Param::Trainable(Var::from_tensor(&tensor.detach())?))
    }

    /// The value, for use in a forward pass. For a trainable weight this is the `Var`'s own
    /// tensor, so operations on it are recorded for backpropagation.
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }

    /// The `Var` to hand to an optimizer, if this weight is trainable.
    pub fn var(&self) -> Option<&Var> {
        match self {
            Param::Frozen(_) => None,
            Param::Trainable(v) => Some(v),
        }
    }

    /// Whether gradients flow to this weight.
    pub fn is_trainable(&self) -> bool {
        matches!(self, Param::Trainable(_))
    }

    /// Number of scalars in the weight.
    pub fn elem_count(&self) -> usize {
        self.tensor().elem_count()
    }

    // ANCHOR: freeze
    /// Stop training this weight. No copy: the frozen tensor shares the `Var`'s storage.
    pub fn freeze(&mut self) {
        if let Param::Trainable(v) = self {
            *self = Param::Frozen(v.as_detached_tensor());
        }
    }

    /// Start training this weight. A frozen tensor is copied into a fresh `Var`, so that updates
    /// never write into storage that other code may share.
    pub fn unfreeze(&mut self) -> Result<()> {
        if let Param::Frozen(t) = self {
            *self = Param::Trainable(Var::from_tensor(t)?);
        }
        Ok(())
    }
    // ANCHOR_END: freeze
}
