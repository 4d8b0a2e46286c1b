//! E2E NLG's official release (Novikova et al. 2017, CC BY-SA 4.0), downloaded once when online:
//! the zip from the dataset's GitHub release, with a progress bar, unpacked into the offline cache
//! (`trainset.csv`, `devset.csv`, `testset_w_refs.csv`). Machines without the internet use a
//! folder that already holds the CSVs (`data/e2e/` in this repository).

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use super::cache::cache_dir;
use crate::error::{LoraError, Result};
use crate::io::write_atomic;

/// The official release.
const E2E_URL: &str = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip";

/// The CSV files of the release.
pub const E2E_FILES: [&str; 3] = ["trainset.csv", "devset.csv", "testset_w_refs.csv"];

/// Where the downloaded release is kept.
fn e2e_cache_dir() -> PathBuf {
    cache_dir().join("e2e")
}

/// The folder with E2E's CSVs: the cache if it has them, else downloaded into it.
pub fn fetch_e2e() -> Result<PathBuf> {
    let dir = e2e_cache_dir();
    if E2E_FILES.iter().all(|f| dir.join(f).is_file()) {
        return Ok(dir);
    }
    let bytes = super::http::get(E2E_URL, "E2E NLG")?;
    extract_e2e_zip(&bytes, &dir)?;
    Ok(dir)
}

/// Write the release's CSVs from the zip in `bytes` into `dir` (each atomically); the zip's
/// folder layout does not matter. Returns the files written; a zip without them is an error.
pub fn extract_e2e_zip(bytes: &[u8], dir: &Path) -> Result<Vec<PathBuf>> {
    let bad = |why: String| LoraError::file(dir, format!("E2E release zip: {why}"));
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    let mut written = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let Some(name) = E2E_FILES.iter().find(|f| entry.name().rsplit('/').next() == Some(**f)) else { continue };
        if written.contains(&dir.join(name)) {
            return Err(bad(format!("holds {name} twice")));
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(|e| bad(e.to_string()))?;
        let path = dir.join(name);
        write_atomic(&path, &data)?;
        written.push(path);
    }
    if written.len() != E2E_FILES.len() {
        return Err(bad(format!("expected {E2E_FILES:?}, found {} of them", written.len())));
    }
    Ok(written)
}
