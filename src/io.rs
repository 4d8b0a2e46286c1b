//! Files written so that nothing is lost: write a temporary file beside the target, flush it to
//! disk, then rename it over the target. A rename within one folder is atomic on POSIX file
//! systems, so an interrupted run leaves either the old file or the new one, never half of one.
//! A folder whose files belong together (an adapter's weights and config, a checkpoint) is
//! written the same way as a whole: [`write_dir_atomic`]. And the checksums files are checked
//! with: CRC-32 beside each saved tensor, SHA-256 for pinned downloads.

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

/// Write folder `dir` as a whole: `fill` writes its files into a fresh temporary folder beside
/// it, which then takes `dir`'s place by renames, so a reader of `dir` finds the old folder or the
/// new one, never files of two saves mixed (an adapter's weights of rank 8 beside a config of rank
/// 16, or an old alpha with new weights). Files already in `dir` that `fill` does not write are
/// kept (hard-linked into the new folder). Temporaries that a killed save left beside `dir` are
/// removed first.
///
/// On Linux the two folders are exchanged in one step (`renameat2` with `RENAME_EXCHANGE`);
/// elsewhere the old folder is renamed aside first, so for a moment `dir` is missing: a reader
/// then gets an error, still never a mix.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let name =
        dir.file_name().ok_or_else(|| LoraError::file(dir, "is not a folder path"))?.to_string_lossy().into_owned();
    if dir.exists() && !dir.is_dir() {
        return Err(LoraError::file(dir, "exists and is not a folder"));
    }
    fs::create_dir_all(&parent).map_err(|e| LoraError::io(&parent, e))?;
    recover_moved_aside(dir, &parent, &name);
    remove_stale_temporaries(&parent, &name);
    let tmp = parent.join(format!(".{name}.tmp-{}", unique_suffix()));
    fs::create_dir(&tmp).map_err(|e| LoraError::io(&tmp, e))?;
    in_flight(&tmp, true);
    let result = fill(&tmp).and_then(|()| {
        if dir.is_dir() {
            link_missing(dir, &tmp)?;
        }
        sync_dir(&tmp);
        swap_in(&tmp, dir, &parent, &name, true)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    in_flight(&tmp, false);
    sync_dir(&parent);
    result
}

/// `{pid}-{nanoseconds}-{n}`: unique among the saves of this process (tests save from many
/// threads), of other processes, and of an earlier process that had the same pid (a container
/// restarted after a kill runs as pid 1 again).
fn unique_suffix() -> String {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// The temporaries this process is writing now: of those that carry our pid, only these are live.
static LIVE: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

fn in_flight(tmp: &Path, add: bool) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    if add {
        live.push(tmp.to_path_buf());
    } else {
        live.retain(|p| p != tmp);
    }
}

/// Whether `path` is a temporary this process is writing now.
fn is_in_flight(path: &Path) -> bool {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|p| p == path)
}

/// A save killed between "old folder aside" and "new folder in" (where no exchange exists) left
/// the folder missing and the last good copy at `.NAME.old-...`: put the newest back first.
fn recover_moved_aside(dir: &Path, parent: &Path, name: &str) {
    if dir.exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(parent) else { return };
    let newest = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!(".{name}.old-")))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    if let Some((_, old)) = newest {
        let _ = fs::rename(old, dir);
    }
}

/// Remove `.NAME.tmp-PID-...` and `.NAME.old-PID-...` beside a folder, left by a save that was
/// killed: those of a process that is gone (on Linux, where /proc says so) and those of our own
/// pid that this process is not writing (an earlier process with the same pid).
fn remove_stale_temporaries(parent: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    let own = std::process::id().to_string();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        // Also `..NAME.tmp-...`: the temporary of a folder written inside NAME's temporary.
        let bare = file.trim_start_matches('.');
        if bare.len() == file.len() {
            continue;
        }
        let Some(rest) =
            bare.strip_prefix(&format!("{name}.tmp-")).or_else(|| bare.strip_prefix(&format!("{name}.old-")))
        else {
            continue;
        };
        // Only names this module writes: `PID-NANOS-N`, then possibly a nested temporary's name.
        let id = rest.split('.').next().unwrap_or("");
        if id.split('-').count() != 3 || !id.split('-').all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let pid = id.split('-').next().unwrap_or("");
        let alive = if pid == own {
            is_in_flight(&entry.path())
        } else {
            cfg!(target_os = "linux") && Path::new("/proc").join(pid).exists()
        };
        if !alive {
            let path = entry.path();
            let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        }
    }
}

/// Hard-link into `to` every file of `from` (recursively) that `to` does not have.
fn link_missing(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).map_err(|e| LoraError::io(from, e))?.flatten() {
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if dst.exists() {
            continue;
        }
        let kind = entry.file_type().map_err(|e| LoraError::io(&src, e))?;
        if kind.is_symlink() {
            // A link stays a link (following it could copy a whole tree, or loop).
            let target = fs::read_link(&src).map_err(|e| LoraError::io(&src, e))?;
            #[cfg(unix)]
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| LoraError::io(&dst, e))?;
            #[cfg(not(unix))]
            let _ = target;
        } else if kind.is_dir() {
            fs::create_dir(&dst).map_err(|e| LoraError::io(&dst, e))?;
            link_missing(&src, &dst)?;
        } else {
            fs::hard_link(&src, &dst)
                .or_else(|_| fs::copy(&src, &dst).map(|_| ()))
                .map_err(|e| LoraError::io(&dst, e))?;
        }
    }
    Ok(())
}

/// Put the finished folder `tmp` at `dir` and remove what was there: in one exchange where the
/// system has one (and `try_exchange`), else by moving the old folder aside first.
fn swap_in(tmp: &Path, dir: &Path, parent: &Path, name: &str, try_exchange: bool) -> Result<()> {
    if !dir.exists() {
        return fs::rename(tmp, dir).map_err(|e| LoraError::io(dir, e));
    }
    if try_exchange && exchange(tmp, dir) {
        // `tmp` now holds the old folder.
        let _ = fs::remove_dir_all(tmp);
        return Ok(());
    }
    let old = parent.join(format!(".{name}.old-{}", unique_suffix()));
    fs::rename(dir, &old).map_err(|e| LoraError::io(dir, e))?;
    if let Err(e) = fs::rename(tmp, dir) {
        let _ = fs::rename(&old, dir);
        return Err(LoraError::io(dir, e));
    }
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// Exchange two paths in one atomic step, where the system can (Linux 3.15+); `false` if not.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> bool {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let (Ok(a), Ok(b)) = (CString::new(a.as_os_str().as_bytes()), CString::new(b.as_os_str().as_bytes())) else {
        return false;
    };
    // SAFETY: both are valid NUL-terminated paths, relative to the current directory.
    unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> bool {
    false
}

/// Flush a folder's entries to disk (where the system allows opening a folder), so the renames
/// survive a power cut as well as a kill.
fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Read a whole file; the error names the path.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| LoraError::io(path, e))
}

/// Lowercase hex SHA-256 of `bytes`: what a pinned download is checked against.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// CRC-32 of `bytes` as 8 hex digits: what we store beside each tensor to detect corruption.
pub(crate) fn crc32_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

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

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    }

    #[test]
    fn a_folder_written_as_a_whole_keeps_other_files_and_clears_stale_temporaries() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("best");
        write_dir_atomic(&dir, |t| write_atomic(&t.join("a"), b"1")).unwrap();
        fs::write(dir.join("README.md"), "mine").unwrap();
        fs::create_dir(dir.join("notes")).unwrap();
        fs::write(dir.join("notes/n.txt"), "kept").unwrap();
        // A save killed earlier by another process (a pid that cannot be running).
        fs::create_dir(root.path().join(".best.tmp-4294967295-17-0")).unwrap();
        fs::create_dir(root.path().join(".best.old-4294967295-17-3")).unwrap();
        // One with our own pid that this process is not writing: left by an earlier process that
        // had the same pid (a restarted container).
        fs::create_dir(root.path().join(format!(".best.tmp-{}-5-0", std::process::id()))).unwrap();
        // A user's file that only looks alike is never touched.
        fs::write(root.path().join(".best.tmp-backup"), "mine").unwrap();
        write_dir_atomic(&dir, |t| write_atomic(&t.join("a"), b"2")).unwrap();
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"2");
        assert_eq!(fs::read_to_string(dir.join("README.md")).unwrap(), "mine");
        assert_eq!(fs::read_to_string(dir.join("notes/n.txt")).unwrap(), "kept");
        assert_eq!(names(root.path()), [".best.tmp-backup", "best"], "no temporary left, stale ones removed");
    }

    #[test]
    fn a_failed_fill_changes_nothing_and_a_file_is_not_a_folder() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("best");
        write_dir_atomic(&dir, |t| write_atomic(&t.join("a"), b"1")).unwrap();
        let err = write_dir_atomic(&dir, |t| {
            write_atomic(&t.join("a"), b"half")?;
            Err(LoraError::config("save", "failed halfway"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("halfway"));
        assert_eq!(fs::read(dir.join("a")).unwrap(), b"1", "the old folder is untouched");
        assert_eq!(names(root.path()), ["best"]);
        let file = root.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = write_dir_atomic(&file, |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("is not a folder"), "{err}");
    }

    #[test]
    fn a_save_killed_between_the_two_renames_is_recovered_by_the_next() {
        // Where there is no exchange, a kill after "old folder aside" leaves only the aside copy.
        let root = tempfile::tempdir().unwrap();
        let aside = root.path().join(".best.old-4294967295-9-0");
        fs::create_dir(&aside).unwrap();
        fs::write(aside.join("a"), "good").unwrap();
        write_dir_atomic(&root.path().join("best"), |t| write_atomic(&t.join("b"), b"new")).unwrap();
        assert_eq!(fs::read_to_string(root.path().join("best/a")).unwrap(), "good", "the last good copy is back");
        assert_eq!(fs::read_to_string(root.path().join("best/b")).unwrap(), "new");
        assert_eq!(names(root.path()), ["best"]);
    }

    #[test]
    fn both_ways_of_swapping_put_the_new_folder_in_place_and_leave_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (dir, tmp) = (root.path().join("best"), root.path().join(".best.tmp-x"));
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("a"), "old").unwrap();
        for (try_exchange, value) in [(false, "new"), (true, "newer")] {
            fs::create_dir(&tmp).unwrap();
            fs::write(tmp.join("a"), value).unwrap();
            swap_in(&tmp, &dir, root.path(), "best", try_exchange).unwrap();
            assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), value);
            assert_eq!(names(root.path()), ["best"], "exchange {try_exchange}: the old folder is removed");
        }
        if cfg!(target_os = "linux") {
            fs::create_dir(&tmp).unwrap();
            assert!(exchange(&tmp, &dir), "renameat2(RENAME_EXCHANGE) works on this file system");
        }
    }
}
