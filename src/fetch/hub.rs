//! Model snapshots from the Hugging Face Hub, through `hf-hub` and its cache.

use std::path::PathBuf;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

use crate::error::{LoraError, Result};

/// A checkpoint's weights in one file, as Hugging Face names it.
pub(crate) const SAFETENSORS_FILE: &str = "model.safetensors";
/// The index of a checkpoint whose weights are sharded over several files.
pub(crate) const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// Download (or find in hf-hub's cache) `config.json`, the weights (one file or every shard of
/// the index) and `tokenizer.json` if there is one; return the snapshot folder that holds them.
pub fn snapshot(model_id: &str, revision: &str) -> Result<PathBuf> {
    let hub_err = |e: hf_hub::api::sync::ApiError| LoraError::Hub { repo: model_id.into(), why: e.to_string() };
    let api = ApiBuilder::new().with_progress(true).build().map_err(hub_err)?;
    let repo = api.repo(Repo::with_revision(model_id.into(), RepoType::Model, revision.into()));
    let config = repo.get("config.json").map_err(hub_err)?;
    if repo.get(SAFETENSORS_FILE).is_err() {
        let index = repo.get(SAFETENSORS_INDEX).map_err(hub_err)?;
        let text = std::fs::read_to_string(&index).map_err(|e| LoraError::io(&index, e))?;
        let parsed: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LoraError::file(&index, e.to_string()))?;
        let mut shards: Vec<&str> =
            parsed["weight_map"].as_object().into_iter().flatten().filter_map(|(_, f)| f.as_str()).collect();
        shards.sort();
        shards.dedup();
        for shard in shards {
            repo.get(shard).map_err(hub_err)?;
        }
    }
    // A tokenizer is optional for loading, but every model we target has one.
    let _ = repo.get("tokenizer.json");
    Ok(config.parent().expect("a cached file has a folder").to_path_buf())
}
