//! Keep freed memory instead of handing it back to the OS.
//!
//! A training step allocates and frees hundreds of MB of activations and gradients. glibc's
//! default returns large freed blocks to the kernel (they come from `mmap`, or sit at the top of
//! the heap past the trim threshold) and the next step faults them back in page by page: on this
//! project's machines that cost about a quarter of the CPU time of a SmolLM2 step. Telling glibc
//! to serve every block from its heap and never trim it (what `MALLOC_MMAP_MAX_=0
//! MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...` do from the environment) keeps the pages
//! mapped and reused. The examples call this first thing in `main`; a library user who brings
//! their own `main` can call it too, or set those variables.

/// Tune glibc's allocator for training (see the module docs). Does nothing where the allocator is
/// not glibc's, or when any `MALLOC_*` variable is set (the user's choice wins). Returns whether it
/// changed anything.
pub fn keep_freed_memory() -> bool {
    if std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_")) {
        return false;
    }
    tune()
}

/// Hand the heap's free memory back to the OS now (glibc's `malloc_trim`), for a process that
/// runs several trainings one after the other and measures each one's peak memory. Does nothing
/// where the allocator is not glibc's.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune() -> bool {
    // SAFETY: mallopt only changes glibc's allocation policy; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
            && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_accepts_the_settings_unless_the_user_chose_their_own() {
        let user_set = std::env::vars_os().any(|(k, _)| k.to_string_lossy().starts_with("MALLOC_"));
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(super::keep_freed_memory(), glibc && !user_set);
    }
}
