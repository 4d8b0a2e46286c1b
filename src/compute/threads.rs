//! Ask for the thread count once, not before every op.
//!
//! candle decides how many threads a matmul or an elementwise op gets by calling
//! `candle_core::utils::get_num_threads()` each time, and unless `RAYON_NUM_THREADS` is set that
//! opens and parses `/proc/cpuinfo` (to count physical cores): thousands of times per SmolLM2
//! training step, each one the kernel formatting the whole file. [`pin_thread_count`] asks once
//! and sets `RAYON_NUM_THREADS` to the answer, which candle (and rayon) then read instead. The
//! examples call it first thing in `main`; a library user can call it too, or set the variable.

/// Set `RAYON_NUM_THREADS` to candle's own default (unless the user set it) and return the
/// thread count. Call it at the start of `main`, before other threads exist: changing the
/// environment while another thread reads it is a data race.
pub fn pin_thread_count() -> usize {
    let threads = candle_core::utils::get_num_threads();
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    threads
}
