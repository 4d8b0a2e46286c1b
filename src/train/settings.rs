//! The settings a training command takes, checked before anything loads or runs: one place for
//! every example. The parsers plug into clap (`#[arg(long, value_parser = settings::learning_rate)]`),
//! so a learning rate of -1e-3 or a batch size of 0 is refused at the command line, with the
//! flag and the rule, in milliseconds; [`check_adapter_fits`] and [`check_length_fits`] run right
//! after the model loads, before any generation or training, for what depends on the model
//! (targets, rank, length).

use std::path::PathBuf;

use crate::error::{LoraError, Result};
use crate::lora::config::LoraConfig;
use crate::lora::model::LoraModel;

fn number<T: std::str::FromStr>(s: &str) -> std::result::Result<T, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not a number"))
}

/// A learning rate: finite and > 0. (A negative rate climbs the loss: gradient ascent; zero
/// trains nothing.)
pub fn learning_rate(s: &str) -> std::result::Result<f64, String> {
    let lr: f64 = number(s)?;
    if !lr.is_finite() {
        Err(format!("{lr} is not a finite number"))
    } else if lr < 0.0 {
        Err(format!("{lr} is negative: the optimizer would climb the loss (gradient ascent)"))
    } else if lr == 0.0 {
        Err("0 trains nothing; typical LoRA rates are 1e-4 to 1e-3".into())
    } else {
        Ok(lr)
    }
}

/// A number that must be finite and > 0 (LoRA's alpha, a learning-rate ratio).
pub fn positive(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = number(s)?;
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(format!("{x} must be finite and > 0"))
    }
}

/// A number that must be finite and >= 0 (weight decay).
pub fn non_negative(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = number(s)?;
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err(format!("{x} must be finite and >= 0"))
    }
}

/// A count that must be at least 1 (steps, batch size, rank, accumulation, evaluation interval,
/// maximum length).
pub fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    let n: usize = number(s)?;
    if n >= 1 {
        Ok(n)
    } else {
        Err("must be at least 1".into())
    }
}

/// A dropout probability, in [0, 1).
pub fn dropout(s: &str) -> std::result::Result<f32, String> {
    let p: f32 = number(s)?;
    if (0.0..1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} must be in [0, 1) (1 would drop every input)"))
    }
}

/// An output folder: created now if it is missing, so a path that cannot be a folder (a file, a
/// path under a file, a place where folders cannot be made) is found before a run's first save,
/// not 50 seconds into it.
pub fn out_dir(s: &str) -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(s);
    if path.exists() && !path.is_dir() {
        return Err(format!("{s} is a file, not a folder"));
    }
    std::fs::create_dir_all(&path).map_err(|e| format!("{s} cannot be created: {e}"))?;
    Ok(path)
}

/// What depends on the model, checked right after it loads: the LoRA settings are valid, every
/// target names layers of this model, and the rank fits every targeted layer (r <= min(in, out):
/// a larger r adds parameters but no rank).
pub fn check_adapter_fits(model: &dyn LoraModel, config: &LoraConfig) -> Result<()> {
    config.validate()?;
    let targets = crate::tasks::t03_inject::find_target_modules(model, &config.target_modules)?;
    // (name, in, out) of every targeted layer whose min(in, out) is below the rank.
    let too_small: Vec<(String, usize, usize)> = model
        .linears()
        .into_iter()
        .filter(|(name, _)| targets.contains(name))
        .map(|(name, slot)| (name, slot.in_out_features().0, slot.in_out_features().1))
        .filter(|&(_, i, o)| config.r > i.min(o))
        .collect();
    if let Some((name, i, o)) = too_small.first() {
        let largest = too_small.iter().map(|&(_, i, o)| i.min(o)).min().unwrap_or(0);
        return Err(LoraError::config(
            "rank",
            format!(
                "{} is larger than min(in, out) of {} targeted layers, e.g. `{name}` ({i} -> {o}): a rank above \
                 that adds parameters but no rank; choose r <= {largest}",
                config.r,
                too_small.len(),
            ),
        ));
    }
    Ok(())
}

/// The longest training sequence fits the model's positions (`CausalLm::max_positions`).
pub fn check_length_fits(max_len: usize, max_positions: Option<usize>) -> Result<()> {
    match max_positions {
        Some(limit) if max_len > limit => Err(LoraError::config(
            "max_len (--max-len)",
            format!("{max_len} tokens is longer than the model's {limit} positions"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_refuses_what_cannot_be_right_and_names_why() {
        assert_eq!(learning_rate("2e-4"), Ok(2e-4));
        assert!(learning_rate("-1e-3").unwrap_err().contains("gradient ascent"));
        assert!(learning_rate("0").unwrap_err().contains("trains nothing"));
        assert!(learning_rate("inf").unwrap_err().contains("not a finite"));
        assert!(learning_rate("NaN").unwrap_err().contains("not a finite"));
        assert!(learning_rate("fast").unwrap_err().contains("not a number"));
        assert_eq!(positive("16"), Ok(16.0));
        assert!(positive("0").is_err() && positive("-2").is_err() && positive("inf").is_err());
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-0.01").is_err());
        assert_eq!(at_least_one("1"), Ok(1));
        assert!(at_least_one("0").unwrap_err().contains("at least 1"));
        assert!(at_least_one("-3").is_err());
        assert_eq!(dropout("0.1"), Ok(0.1));
        assert!(dropout("1").unwrap_err().contains("[0, 1)") && dropout("-0.1").is_err());
    }

    #[test]
    fn an_output_folder_that_is_a_file_is_refused_and_a_missing_one_made() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("taken");
        std::fs::write(&file, "x").unwrap();
        assert!(out_dir(file.to_str().unwrap()).unwrap_err().contains("is a file"));
        let new = root.path().join("runs/a");
        assert_eq!(out_dir(new.to_str().unwrap()).unwrap(), new);
        assert!(new.is_dir());
        let inside_file = file.join("sub");
        assert!(out_dir(inside_file.to_str().unwrap()).unwrap_err().contains("cannot be created"));
    }
}
