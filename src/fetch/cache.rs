//! The offline cache: where downloaded models and data are kept between runs.

use std::path::PathBuf;

/// Where offline copies live: `$LORA_FROM_SCRATCH_CACHE`, else `$XDG_CACHE_HOME/lora-from-scratch`,
/// else `~/.cache/lora-from-scratch` (the folder `scripts/fetch-smollm2.sh` fills).
pub(crate) fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LORA_FROM_SCRATCH_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("lora-from-scratch")
}
