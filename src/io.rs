//! Files written so that nothing is lost: write a temporary file beside the target, flush it to
//! disk, then rename it over the target. A rename within one folder is atomic on POSIX file
//! systems, so an interrupted run leaves either the old file or the new one, never half of one.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{LoraError, Result};

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| LoraError::file(path, "is not a file path"))?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(LoraError::io(path, e));
    }
    Ok(())
}

/// Read a whole file; the error names the path.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| LoraError::io(path, e))
}

/// CRC-32 of `bytes` as 8 hex digits: what we store beside each tensor to detect corruption.
pub fn crc32_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
        let err = write_atomic(&dir.path().join("missing/a.bin"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/a.bin"), "the error names the path: {err}");
    }
}
