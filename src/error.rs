//! One error type for the crate. Every variant names the thing that was wrong and what was
//! expected, so that a learner or a practitioner can act on the message without a debugger.

use std::fmt;
use std::path::PathBuf;

/// What went wrong with one tensor of an adapter file, found while checking it against a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorProblem {
    /// The model expects this tensor and the file does not have it.
    Missing { name: String, expected: Vec<usize> },
    /// The file has a tensor the model has no place for.
    Unexpected { name: String, found: Vec<usize> },
    /// The tensor exists on both sides with different shapes.
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    /// The stored bytes do not match the checksum written beside them, or hold NaN / inf.
    Corrupt { name: String, why: String },
}

impl fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorProblem::Missing { name, expected } => {
                write!(f, "missing tensor `{name}` (expected shape {expected:?})")
            }
            TensorProblem::Unexpected { name, found } => {
                write!(f, "unexpected tensor `{name}` (shape {found:?}) matches no adapted module")
            }
            TensorProblem::Shape { name, expected, found } => {
                write!(f, "tensor `{name}` has shape {found:?}, expected {expected:?}")
            }
            TensorProblem::Corrupt { name, why } => write!(f, "tensor `{name}` is corrupt: {why}"),
        }
    }
}

/// The crate's error type.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A setting that cannot be right (a rank of 0, a negative learning rate, a model config
    /// that contradicts itself): `what` names it, `why` says what was expected.
    #[error("{what}: {why}")]
    InvalidConfig { what: String, why: String },

    /// Data handed to a function that cannot be used as it is: an empty dataset or prompt, a batch
    /// with no supervised token, a token id past the vocabulary, more positions than the model
    /// has, a KV cache used out of order. (The learner's tasks keep `InvalidConfig` where their
    /// stubs name it: t05's empty batch, for one.)
    #[error("{what}: {why}")]
    InvalidInput { what: String, why: String },

    /// A training run stopped because it diverged: at optimizer step `step` (from 1) the training
    /// loss was `loss` (NaN when that is what diverged) and `what` says what was seen; `peak_lr`
    /// is the schedule's peak learning rate, the likely cause; `kept` says which weights are kept.
    /// A caller can match this variant to tell a run that diverged from one that failed.
    #[error("training: diverged: {what}; the learning rate (peak {peak_lr:e}) is the likely cause, try one 10 times lower; {kept}")]
    Diverged { step: usize, loss: f64, peak_lr: f64, what: String, kept: String },

    #[error("{what} has shape {found:?}, expected {expected}")]
    Shape { what: String, expected: String, found: Vec<usize> },

    #[error(
        "target module `{target}` matches no linear layer of the model; \
         a target matches a full module name or a dotted suffix of one. {}",
        target_names(available)
    )]
    UnknownTarget { target: String, available: Vec<String> },

    #[error("module `{module}`: {why}")]
    Module { module: String, why: String },

    #[error("adapter in {path} does not fit the model:\n  {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    AdapterMismatch { path: PathBuf, problems: Vec<TensorProblem> },

    /// A file that exists but is not what it should be (its format, a checksum, its contents).
    #[error("{path}: {why}")]
    File { path: PathBuf, why: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("cannot get `{repo}` from the Hugging Face Hub: {why}")]
    Hub { repo: String, why: String },

    #[error("{what}: the model architecture `{architecture}` is not implemented (this crate has: {known})")]
    UnknownArchitecture { what: PathBuf, architecture: String, known: String },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, LoraError>;

impl LoraError {
    /// A bad setting: `what` names it, `why` says what was expected.
    pub fn config(what: impl Into<String>, why: impl Into<String>) -> Self {
        LoraError::InvalidConfig { what: what.into(), why: why.into() }
    }

    /// Input data that cannot be used: `what` names it, `why` says what was expected.
    pub fn input(what: impl Into<String>, why: impl Into<String>) -> Self {
        LoraError::InvalidInput { what: what.into(), why: why.into() }
    }

    /// A tensor with the wrong shape.
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, found: &[usize]) -> Self {
        LoraError::Shape { what: what.into(), expected: expected.into(), found: found.to_vec() }
    }

    /// Something wrong with one module of a model.
    pub fn module(module: impl Into<String>, why: impl Into<String>) -> Self {
        LoraError::Module { module: module.into(), why: why.into() }
    }

    /// A file that exists but cannot be used.
    pub fn file(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        LoraError::File { path: path.into(), why: why.into() }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LoraError::Io { path: path.into(), source }
    }
}

/// The targets a model offers, for the unknown-target error: the distinct short names (the last
/// part of each module name, what a user types as a target) in model order, then how many layers
/// there are and one full name, not all 210 of SmolLM2's.
fn target_names(available: &[String]) -> String {
    let mut short: Vec<&str> = Vec::new();
    for name in available {
        let last = name.rsplit('.').next().unwrap_or(name);
        if !short.contains(&last) {
            short.push(last);
        }
    }
    match available.first() {
        Some(first) => format!(
            "The model's linear layers end in: {} ({} layers, such as `{first}`)",
            short.join(", "),
            available.len()
        ),
        None => "The model has no linear layers.".to_string(),
    }
}

/// How a command-line program ends: success, or the error with its causes on stderr and exit
/// code 1. An expected error (no model, a bad flag, a bad file) is a message for the user, not a
/// stack trace, even with `RUST_BACKTRACE` set.
pub fn exit_code<E>(result: std::result::Result<(), E>) -> std::process::ExitCode
where
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", with_causes(e.into().as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its chain of causes on one line, "outer: inner", each said once: an error that
/// already shows its cause (`LoraError::Io` prints "path: the I/O error") does not get it again.
fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        // LoraError::Io shows its I/O error and also returns it as the source.
        let io = LoraError::io("runs/out/adapter_config.json", std::io::Error::other("disk full"));
        assert_eq!(with_causes(&io), "runs/out/adapter_config.json: disk full");
        // A context over it (as the examples add with anyhow) keeps both, once each.
        let err: Box<dyn std::error::Error + Send + Sync> =
            anyhow::Error::new(io).context("saving the adapter to runs/out").into();
        assert_eq!(
            with_causes(err.as_ref()),
            "saving the adapter to runs/out: runs/out/adapter_config.json: disk full"
        );
    }

    #[test]
    fn an_unknown_target_lists_the_short_names_once() {
        let available: Vec<String> = (0..30)
            .flat_map(|i| {
                ["self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"].map(|m| format!("model.layers.{i}.{m}"))
            })
            .chain(["lm_head".to_string()])
            .collect();
        let msg = LoraError::UnknownTarget { target: "q_prj".into(), available }.to_string();
        assert!(msg.contains("`q_prj`"), "{msg}");
        assert!(
            msg.ends_with(
                "end in: q_proj, v_proj, up_proj, lm_head (91 layers, such as `model.layers.0.self_attn.q_proj`)"
            ),
            "{msg}"
        );
    }
}
