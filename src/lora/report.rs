//! The reports the helper functions of task 1.3 return. They are plain data with a `Display`,
//! so tests can check the numbers and a person can read the printout.

use std::fmt;

/// `1234567` -> `"1,234,567"`, as Python's `{:,}` prints it.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Trainable and total parameter counts of a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParameterCount {
    pub trainable: usize,
    pub total: usize,
}

impl ParameterCount {
    /// Trainable parameters as a percentage of all parameters.
    fn trainable_percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.trainable as f64 / self.total as f64
        }
    }
}

impl fmt::Display for ParameterCount {
    /// The line PEFT's `print_trainable_parameters()` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {:.4}",
            thousands(self.trainable),
            thousands(self.total),
            self.trainable_percent()
        )
    }
}

/// One linear layer that received an adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptedModule {
    pub name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub r: usize,
    /// alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub scaling: f64,
}

impl AdaptedModule {
    /// r * (in + out): the scalars in A [r, in] and B [out, r].
    pub fn lora_params(&self) -> usize {
        self.r * (self.in_features + self.out_features)
    }
}

impl fmt::Display for AdaptedModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: [{} -> {}] r={} scaling={} lora params={}",
            self.name,
            self.in_features,
            self.out_features,
            self.r,
            self.scaling,
            thousands(self.lora_params())
        )
    }
}

/// What `inject_lora` did.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectionSummary {
    pub adapted: Vec<AdaptedModule>,
    pub params: ParameterCount,
}

impl fmt::Display for InjectionSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "LoRA injected into {} linear layers:", self.adapted.len())?;
        for m in &self.adapted {
            writeln!(f, "  {m}")?;
        }
        write!(f, "{}", self.params)
    }
}

/// What `check_lora_injection` found.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectionReport {
    /// Linear layers that carry an adapter.
    pub adapted: Vec<AdaptedModule>,
    /// Linear layers without an adapter whose weights are all frozen.
    pub frozen: Vec<String>,
    /// Linear layers whose base weight or bias is trainable: with LoRA this is almost always a
    /// mistake (the base would be fine-tuned in full and the memory saving is lost).
    pub trainable_base: Vec<String>,
    /// Adapters with a frozen A or B (they would not learn).
    pub frozen_adapters: Vec<String>,
    pub params: ParameterCount,
}

impl InjectionReport {
    /// At least one adapter, every adapter trainable and no base linear trainable.
    pub fn is_ok(&self) -> bool {
        !self.adapted.is_empty() && self.trainable_base.is_empty() && self.frozen_adapters.is_empty()
    }
}

impl fmt::Display for InjectionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "adapted linears: {}", self.adapted.len())?;
        for m in &self.adapted {
            writeln!(f, "  {m}")?;
        }
        writeln!(f, "frozen linears: {}", self.frozen.len())?;
        writeln!(f, "trainable base linears: {}", self.trainable_base.len())?;
        for name in &self.trainable_base {
            writeln!(f, "  WARNING: {name} has a trainable base weight; LoRA expects it frozen")?;
        }
        for name in &self.frozen_adapters {
            writeln!(f, "  WARNING: the adapter on {name} is frozen and will not learn")?;
        }
        if self.adapted.is_empty() {
            writeln!(f, "  WARNING: no linear layer has an adapter")?;
        }
        write!(f, "{}", self.params)
    }
}

/// The gradient of one trainable parameter after a backward pass.
#[derive(Clone, Debug, PartialEq)]
pub struct GradientEntry {
    pub name: String,
    /// L2 norm of the gradient; `None` when backpropagation produced no gradient at all, which
    /// means the parameter is cut off from the loss.
    pub norm: Option<f64>,
}

/// What `check_gradients` found, one entry per trainable parameter in model order.
#[derive(Clone, Debug, PartialEq)]
pub struct GradientReport {
    pub entries: Vec<GradientEntry>,
}

impl GradientReport {
    /// Parameters that received no gradient.
    pub fn missing(&self) -> Vec<&str> {
        self.entries.iter().filter(|e| e.norm.is_none()).map(|e| e.name.as_str()).collect()
    }

    /// Parameters whose gradient holds NaN or inf.
    pub fn non_finite(&self) -> Vec<&str> {
        self.entries.iter().filter(|e| e.norm.is_some_and(|n| !n.is_finite())).map(|e| e.name.as_str()).collect()
    }

    /// Every trainable parameter got a finite gradient.
    pub fn is_ok(&self) -> bool {
        self.missing().is_empty() && self.non_finite().is_empty()
    }
}

impl fmt::Display for GradientReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            match e.norm {
                Some(n) if n.is_finite() => writeln!(f, "{}: grad norm {n:.6e}", e.name)?,
                Some(n) => writeln!(f, "{}: grad norm {n}  <- NOT FINITE", e.name)?,
                None => writeln!(f, "{}: NO GRADIENT (cut off from the loss)", e.name)?,
            }
        }
        write!(f, "{} trainable parameters, {} without a gradient", self.entries.len(), self.missing().len())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_groups_like_python() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(134_515_008), "134,515,008");
    }
}
