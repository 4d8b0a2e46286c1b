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

    #[error("{what}: {why}")]
    InvalidConfig { what: String, why: String },

    #[error("{what} has shape {found:?}, expected {expected}")]
    Shape { what: String, expected: String, found: Vec<usize> },

    #[error(
        "target module `{target}` matches no linear layer of the model; \
         a target matches a full module name or a dotted suffix of one. The model's linear layers are:\n  {}",
        available.join("\n  ")
    )]
    UnknownTarget { target: String, available: Vec<String> },

    #[error("module `{module}`: {why}")]
    Module { module: String, why: String },

    #[error("adapter in {path} does not fit the model:\n  {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n  "))]
    AdapterMismatch { path: PathBuf, problems: Vec<TensorProblem> },

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

/// How a command-line program ends: success, or the error with its causes on stderr (`{:#}`, which
/// `anyhow` prints as "outer: inner") and exit code 1. An expected error (no model, a bad flag, a
/// bad file) is a message for the user, not a stack trace, even with `RUST_BACKTRACE` set.
pub fn exit_code<E: fmt::Display>(result: std::result::Result<(), E>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
