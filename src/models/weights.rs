//! Named weights read from disk, handed to a model one by one with their shapes checked.
//!
//! A Hugging Face folder holds `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`; a GGUF file is read by [`super::gguf`] into the same map. Every
//! lookup names the tensor and the file, so a wrong checkpoint fails with a message that says
//! which tensor is missing or has the wrong shape.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{LoraError, Result};
use crate::fetch::hub::{SAFETENSORS_FILE, SAFETENSORS_INDEX};

/// Tensors by name, converted to one dtype, with the place they came from for error messages.
#[derive(Debug)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    source: PathBuf,
    dtype: DType,
}

/// The dtype a floating-point weight is kept in for a model loaded as `dtype`: `dtype`, except
/// that on the CPU a half-precision model keeps its vectors (norm weights, biases) in f32. There
/// the activations stay f32 and only the matrices, which hold the memory and the matmul time, are
/// half precision (see `compute::bf16`).
fn stored_dtype(t: &Tensor, dtype: DType) -> DType {
    let half = matches!(dtype, DType::BF16 | DType::F16);
    if half && t.device().is_cpu() && t.rank() < 2 {
        DType::F32
    } else {
        dtype
    }
}

impl Weights {
    /// Wrap tensors read elsewhere (the GGUF reader), converting them to `dtype`.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, source: &Path, dtype: DType) -> Result<Self> {
        let tensors = tensors
            .into_iter()
            .map(|(n, t)| {
                let to = stored_dtype(&t, dtype);
                Ok((n, t.to_dtype(to)?))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Weights { tensors, source: source.to_path_buf(), dtype })
    }

    /// Every tensor of the checkpoint in `dir`: `model.safetensors`, or the shards its index
    /// names. Floating-point tensors are converted to `dtype`.
    pub(crate) fn from_hf_folder(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join(SAFETENSORS_FILE);
        let index = dir.join(SAFETENSORS_INDEX);
        let files = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            shard_files(&index)?
        } else {
            return Err(LoraError::file(
                dir,
                format!("has neither {SAFETENSORS_FILE} nor {SAFETENSORS_INDEX}: not a Hugging Face checkpoint folder"),
            ));
        };
        let mut tensors = HashMap::new();
        for file in &files {
            if !file.is_file() {
                return Err(LoraError::file(file, "is named by the checkpoint index but does not exist"));
            }
            let loaded = candle_core::safetensors::load(file, device)
                .map_err(|e| LoraError::file(file, format!("is not a readable safetensors file: {e}")))?;
            tensors.extend(loaded);
        }
        let source = if files.len() == 1 { files[0].clone() } else { index };
        let tensors = tensors
            .into_iter()
            .map(|(n, t)| {
                let t = if t.dtype().is_float() { t.to_dtype(stored_dtype(&t, dtype))? } else { t };
                Ok((n, t))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        Ok(Weights { tensors, source, dtype })
    }

    /// The dtype every floating-point weight was converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The tensor `name`, which must have shape `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            LoraError::file(&self.source, format!("has no tensor `{name}` (expected shape {shape:?})"))
        })?;
        if t.dims() != shape {
            return Err(LoraError::shape(
                format!("tensor `{name}` in {}", self.source.display()),
                format!("{shape:?}"),
                t.dims(),
            ));
        }
        Ok(t.clone())
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> BTreeSet<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Where the weights were read from.
    pub fn source(&self) -> &Path {
        &self.source
    }
}

/// The distinct shard files an index names, in the index's folder.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| LoraError::io(index, e))?;
    let parsed: Index =
        serde_json::from_str(&text).map_err(|e| LoraError::file(index, format!("is not a checkpoint index: {e}")))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Read and parse a model's `config.json`.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| LoraError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| LoraError::file(path, format!("is not a valid model config: {e}")))
}
