//! Each model's module table, written once: the struct fields are named as Hugging Face names
//! the modules, and the names LoRA sees come from them.
//!
//! PyTorch finds `model.layers.3.self_attn.q_proj` by walking attributes (`named_modules()`).
//! Rust has no such walk, so a model type lists the fields that hold modules, in order, with
//! [`modules!`]; the macro writes [`Modules::visit`] and [`Modules::visit_mut`], which hand every
//! linear slot and every other weight to a [`Found`] under its dotted path. A `Vec` of blocks
//! adds the index (`layers.3`), an `Option` adds nothing when it is `None` (an untied head), and
//! the leaves are [`LinearSlot`] (a module name) and [`Param`] (a parameter name). The
//! [`crate::lora::model::LoraModel`] accessors of every model are then [`linears`],
//! [`linears_mut`], [`params`] and [`params_mut`] on the whole model
//! (`lora_model_accessors!()` writes them).
//!
//! The small modules every model uses are here too, named as in PyTorch: [`Embedding`],
//! [`RmsNorm`] and [`LayerNorm`].

use crate::lora::param::Param;
use crate::lora::slot::LinearSlot;

/// What a walk over a model found, each under its full name, in the model's order.
#[derive(Default)]
pub(crate) struct Found<'a> {
    pub linears: Vec<(String, &'a LinearSlot)>,
    pub params: Vec<(String, &'a Param)>,
}

/// [`Found`], mutably.
#[derive(Default)]
pub(crate) struct FoundMut<'a> {
    pub linears: Vec<(String, &'a mut LinearSlot)>,
    pub params: Vec<(String, &'a mut Param)>,
}

/// A module, or a part of a model that holds modules, whose weights can be listed by name.
pub(crate) trait Modules {
    /// Add every linear slot and weight under `path` to `found`.
    fn visit<'a>(&'a self, path: &str, found: &mut Found<'a>);

    /// Add every linear slot and weight under `path` to `found`, mutably.
    fn visit_mut<'a>(&'a mut self, path: &str, found: &mut FoundMut<'a>);
}

/// `path.name`, or `name` at the top.
pub(crate) fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// Implement [`Modules`] for a struct from the list of its fields that hold modules, in the
/// order the model runs them; each field's name is the module's name. Other fields (sizes, a
/// cache of RoPE tables) are left out of the list.
macro_rules! modules {
    ($ty:ty { $($field:ident),+ $(,)? }) => {
        impl $crate::models::table::Modules for $ty {
            fn visit<'a>(&'a self, path: &str, found: &mut $crate::models::table::Found<'a>) {
                $( $crate::models::table::Modules::visit(
                    &self.$field, &$crate::models::table::join(path, stringify!($field)), found); )+
            }

            fn visit_mut<'a>(&'a mut self, path: &str, found: &mut $crate::models::table::FoundMut<'a>) {
                $( $crate::models::table::Modules::visit_mut(
                    &mut self.$field, &$crate::models::table::join(path, stringify!($field)), found); )+
            }
        }
    };
}
pub(crate) use modules;

/// The four accessors of [`crate::lora::model::LoraModel`] for a model that implements
/// [`Modules`], written inside its `impl LoraModel` block.
macro_rules! lora_model_accessors {
    () => {
        fn linears(&self) -> Vec<(String, &$crate::lora::slot::LinearSlot)> {
            $crate::models::table::linears(self)
        }

        fn linears_mut(&mut self) -> Vec<(String, &mut $crate::lora::slot::LinearSlot)> {
            $crate::models::table::linears_mut(self)
        }

        fn params(&self) -> Vec<(String, &$crate::lora::param::Param)> {
            $crate::models::table::params(self)
        }

        fn params_mut(&mut self) -> Vec<(String, &mut $crate::lora::param::Param)> {
            $crate::models::table::params_mut(self)
        }
    };
}
pub(crate) use lora_model_accessors;

impl Modules for LinearSlot {
    fn visit<'a>(&'a self, path: &str, found: &mut Found<'a>) {
        found.linears.push((path.to_string(), self));
    }

    fn visit_mut<'a>(&'a mut self, path: &str, found: &mut FoundMut<'a>) {
        found.linears.push((path.to_string(), self));
    }
}

impl Modules for Param {
    fn visit<'a>(&'a self, path: &str, found: &mut Found<'a>) {
        found.params.push((path.to_string(), self));
    }

    fn visit_mut<'a>(&'a mut self, path: &str, found: &mut FoundMut<'a>) {
        found.params.push((path.to_string(), self));
    }
}

/// A list of blocks: `layers.0`, `layers.1`, ... as `nn.ModuleList` names them.
impl<M: Modules> Modules for Vec<M> {
    fn visit<'a>(&'a self, path: &str, found: &mut Found<'a>) {
        for (i, m) in self.iter().enumerate() {
            m.visit(&join(path, &i.to_string()), found);
        }
    }

    fn visit_mut<'a>(&'a mut self, path: &str, found: &mut FoundMut<'a>) {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_mut(&join(path, &i.to_string()), found);
        }
    }
}

/// A module a model may not have (an untied head): nothing when it is `None`.
impl<M: Modules> Modules for Option<M> {
    fn visit<'a>(&'a self, path: &str, found: &mut Found<'a>) {
        if let Some(m) = self {
            m.visit(path, found);
        }
    }

    fn visit_mut<'a>(&'a mut self, path: &str, found: &mut FoundMut<'a>) {
        if let Some(m) = self {
            m.visit_mut(path, found);
        }
    }
}

/// Every linear slot of `model` by module name.
pub(crate) fn linears(model: &impl Modules) -> Vec<(String, &LinearSlot)> {
    let mut found = Found::default();
    model.visit("", &mut found);
    found.linears
}

/// Every linear slot of `model` by module name, mutably.
pub(crate) fn linears_mut(model: &mut impl Modules) -> Vec<(String, &mut LinearSlot)> {
    let mut found = FoundMut::default();
    model.visit_mut("", &mut found);
    found.linears
}

/// Every weight of `model` outside its linear slots, by parameter name.
pub(crate) fn params(model: &impl Modules) -> Vec<(String, &Param)> {
    let mut found = Found::default();
    model.visit("", &mut found);
    found.params
}

/// Every weight of `model` outside its linear slots, mutably.
pub(crate) fn params_mut(model: &mut impl Modules) -> Vec<(String, &mut Param)> {
    let mut found = FoundMut::default();
    model.visit_mut("", &mut found);
    found.params
}

/// `nn.Embedding`: a table [vocab, d], one row per token id.
#[derive(Clone, Debug)]
pub(crate) struct Embedding {
    pub weight: Param,
}
modules!(Embedding { weight });

/// `LlamaRMSNorm`: a scale [d] (no bias).
#[derive(Clone, Debug)]
pub(crate) struct RmsNorm {
    pub weight: Param,
}
modules!(RmsNorm { weight });

/// `nn.LayerNorm`: a scale and a shift [d].
#[derive(Clone, Debug)]
pub(crate) struct LayerNorm {
    pub weight: Param,
    pub bias: Param,
}
modules!(LayerNorm { weight, bias });
