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

/// The body of `url` (HTTP GET), with a progress bar labelled `label` on a terminal. The error
/// names the URL and why it failed.
pub fn http_get(url: &str, label: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let fail = |why: String| LoraError::file(url, format!("cannot be downloaded: {why}"));
    // A stalled server ends the download with an error instead of hanging the run.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => fail(format!("HTTP status {code}")),
        ureq::Error::Transport(t) => fail(match t.message() {
            Some(m) => format!("{}: {m}", t.kind()),
            None => t.kind().to_string(),
        }),
    })?;
    let len = resp.header("content-length").and_then(|v| v.parse::<u64>().ok());
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_message(label.to_string());
    // The header is the server's word, not a promise: reserve at most 256 MiB up front.
    let mut bytes = Vec::with_capacity(len.unwrap_or(0).min(256 << 20) as usize);
    let mut reader = bar.wrap_read(resp.into_reader());
    reader.read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
    bar.finish_and_clear();
    Ok(bytes)
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
