//! The cost measure of a run besides its time: the peak resident memory of the process, reset
//! between the runs of a sweep.

/// Reset the kernel's peak-RSS mark of this process, so the next [`peak_rss_mib`] covers one run
/// of a sweep (Linux; elsewhere the peak stays the process's). The heap's free memory goes back
/// to the OS first: [`crate::compute::alloc::keep_freed_memory`] keeps it mapped, and the mark restarts
/// from what is mapped.
pub(crate) fn reset_peak_rss() {
    crate::compute::alloc::release_free_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process since start or the last `reset_peak_rss` (MiB).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
