//! PEFT's adapter folder as files: `adapter_model.safetensors` (tensors by PEFT key) and
//! `adapter_config.json`, written and read with every check a damaged file needs.
//!
//! This layer knows keys and tensors, not LoRA layers: task 1.4 turns a model's adapters into
//! keyed tensors and back (`save_lora_weights` / `load_lora_weights`), and the other writers of
//! PEFT folders (export of split GPT-2 slices, `modules_to_save`) add their tensors to the same
//! map before the one write here.
//!
//! May use: `error`, `io`, `lora::config`, `peft::format`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::{SafeTensors, View};

use crate::error::{LoraError, Result, TensorProblem};
use crate::io::{crc32_hex, read_file, write_atomic, write_dir_atomic};
use crate::lora::config::LoraConfig;
use crate::peft::format::{AdapterConfig, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

/// Metadata key prefix under which each tensor's CRC-32 is stored. PEFT ignores it; reading uses
/// it to name a tensor whose bytes were damaged on disk.
const CRC_PREFIX: &str = "lora_from_scratch.crc32.";

// ANCHOR: write
/// Write `tensors` (PEFT keys) and `config` into folder `dir` as PEFT does, with every tensor's
/// checksum in the metadata. The folder is written as a whole (`write_dir_atomic`): a run killed
/// mid-save leaves the previous adapter or the new one, never the weights of one beside the
/// config of the other.
pub fn write_adapter(dir: &Path, config: &AdapterConfig, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    // transformers reads "format": "pt"; the checksums let a reader name a damaged tensor.
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut contiguous = BTreeMap::new();
    for (key, t) in tensors {
        let t = t.contiguous()?;
        metadata.insert(format!("{CRC_PREFIX}{key}"), crc32_hex(&t.data()));
        contiguous.insert(key.clone(), t);
    }
    let bytes = safetensors::serialize(&contiguous, Some(metadata))
        .map_err(|e| LoraError::file(&weights_path, format!("cannot serialize: {e}")))?;
    let bytes = with_sorted_header(bytes);
    let json = serde_json::to_string_pretty(config).expect("AdapterConfig always serializes");
    write_dir_atomic(dir, |tmp| {
        write_atomic(&tmp.join(ADAPTER_WEIGHTS_FILE), &bytes)?;
        write_atomic(&tmp.join(ADAPTER_CONFIG_FILE), json.as_bytes())
    })
}
// ANCHOR_END: write

/// The same file with its JSON header's keys sorted. safetensors writes the metadata from a
/// `HashMap`, whose order changes from run to run, so the same adapter would be other bytes every
/// time (and a regenerated fixture a diff). Same keys, same values, same compact JSON: the header
/// keeps its length and the tensors their offsets. A header that does not parse is left as it is.
fn with_sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize) else {
        return bytes;
    };
    let Some(text) = bytes.get(8..8 + len).and_then(|h| std::str::from_utf8(h).ok()) else { return bytes };
    let text = text.trim_end();
    // serde_json's maps are ordered by key (this crate does not enable `preserve_order`).
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else { return bytes };
    let sorted = value.to_string();
    if sorted.len() == text.len() {
        bytes[8..8 + sorted.len()].copy_from_slice(sorted.as_bytes());
    }
    bytes
}

/// A PEFT adapter folder read into memory: its config, and its weights file checked to be a
/// valid safetensors file. Tensors are read one by one, each checked ([`AdapterFile::tensor`]).
pub struct AdapterFile {
    /// `adapter_config.json` as PEFT writes it.
    pub config: AdapterConfig,
    path: PathBuf,
    bytes: Vec<u8>,
    checksums: HashMap<String, String>,
}

impl AdapterFile {
    /// Read `dir`'s `adapter_config.json` and `adapter_model.safetensors`. A missing, truncated or
    /// garbled file is an error naming it.
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join(ADAPTER_CONFIG_FILE);
        let config: AdapterConfig = serde_json::from_slice(&read_file(&config_path)?)
            .map_err(|e| LoraError::file(&config_path, format!("is not a valid PEFT adapter config: {e}")))?;
        let path = dir.join(ADAPTER_WEIGHTS_FILE);
        let bytes = read_file(&path)?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&path, e))?;
        let checksums = header.metadata().clone().unwrap_or_default();
        SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&path, e))?;
        Ok(AdapterFile { config, path, bytes, checksums })
    }

    /// The LoRA config the adapter was saved with; one this crate cannot honour is an error
    /// naming the config file.
    pub(crate) fn lora_config(&self) -> Result<LoraConfig> {
        let path = self.path.with_file_name(ADAPTER_CONFIG_FILE);
        self.config.to_lora_config().map_err(|e| LoraError::file(&path, e.to_string()))
    }

    /// The weights file, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("checked when read")
    }

    /// Every key in the weights file, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.view().names().into_iter().map(str::to_string).collect();
        keys.sort();
        keys
    }

    /// The shape stored under `key`, if there is such a tensor.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.view().tensor(key).ok().map(|v| v.shape().to_vec())
    }

    // ANCHOR: tensor
    /// The tensor under `key`, which must have `shape`, match its saved checksum and hold only
    /// finite values; loaded on `device` as `dtype`. What is wrong comes back as the
    /// [`TensorProblem`] to report.
    pub fn tensor(
        &self,
        key: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Tensor, TensorProblem> {
        let file = self.view();
        let Ok(view) = file.tensor(key) else {
            return Err(TensorProblem::Missing { name: key.to_string(), expected: shape.to_vec() });
        };
        if view.shape() != shape {
            let (expected, found) = (shape.to_vec(), view.shape().to_vec());
            return Err(TensorProblem::Shape { name: key.to_string(), expected, found });
        }
        let corrupt = |why: String| TensorProblem::Corrupt { name: key.to_string(), why };
        if let Some(crc) = self.checksums.get(&format!("{CRC_PREFIX}{key}")) {
            let found = crc32_hex(view.data());
            if &found != crc {
                return Err(corrupt(format!("CRC-32 {found} does not match the saved {crc}")));
            }
        }
        let t = view.load(device).and_then(|t| t.to_dtype(dtype)).map_err(|e| corrupt(e.to_string()))?;
        // A sum propagates NaN and inf from any entry (a max would skip NaN); f64 so that large
        // finite values cannot overflow it.
        let sum = t.to_dtype(DType::F64).and_then(|t| t.abs()?.sum_all()?.to_scalar::<f64>());
        match sum {
            Ok(s) if s.is_finite() => Ok(t),
            Ok(_) => Err(corrupt("holds NaN or inf".into())),
            Err(e) => Err(corrupt(e.to_string())),
        }
    }
    // ANCHOR_END: tensor
}

fn corrupt(path: &Path, e: safetensors::SafeTensorError) -> LoraError {
    LoraError::file(path, format!("is not a valid safetensors file: {e}"))
}
