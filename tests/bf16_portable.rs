//! The portable path of `compute::bf16` (what CPUs without AVX512_BF16 run: x rounded to bf16,
//! the weight widened to f32, candle's gemm) forced on this CPU, whatever it is, through the same
//! fused-op checks `tests/bf16.rs` runs on the CPU's own path; and, where the CPU has the kernel,
//! one LoRA step of a small bf16 model on both paths, within a few f32 roundings. Its own test
//! binary, since the switch is process-wide: every test here takes `PATH_LOCK` and sets the path
//! it needs.

mod bf16_cases;
mod common;

use lora_from_scratch::compute::bf16::{kernel_in_use, path, set_kernel_enabled, Path, Product};
use std::sync::{Mutex, MutexGuard};

static PATH_LOCK: Mutex<()> = Mutex::new(());

/// The process on `path` until the guard drops (a failed test poisons nothing here).
fn on(path_wanted: Path) -> MutexGuard<'static, ()> {
    let guard = PATH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_kernel_enabled(path_wanted == Path::Kernel);
    assert_eq!(
        path(),
        path_wanted,
        "this CPU cannot take the {path_wanted:?} path (built on a CPU with AVX512_BF16, run on one without? rebuild here)"
    );
    guard
}

#[test]
fn the_switch_forces_the_portable_path() {
    let _on = on(Path::Portable);
    assert!(!kernel_in_use());
    assert_eq!(lora_from_scratch::compute::bf16::pack(&[half::bf16::ONE], (1, 1), Product::XWt).path(), Path::Portable);
}

#[test]
fn pack_many_prepares_each_product_on_the_portable_path() {
    let _on = on(Path::Portable);
    bf16_cases::pack_many_prepares_each_product();
}

#[test]
fn fused_ops_over_a_bf16_weight_match_f32_on_the_portable_path() {
    let _on = on(Path::Portable);
    bf16_cases::fused_ops_over_a_bf16_weight_match_f32();
}

#[test]
fn head_cross_entropy_over_a_bf16_head_matches_f32_on_the_portable_path() {
    let _on = on(Path::Portable);
    bf16_cases::head_cross_entropy_over_a_bf16_head_matches_f32();
}

/// The two paths compute the same thing: one LoRA step of the tiny Llama (two layers) with a
/// bf16 base, and a one-token forward (decoding), on the kernel and on the portable path. The
/// tolerances are measured for this small model; a 30-layer one differs more, at bf16's noise
/// (book: the performance appendix).
#[test]
#[cfg_attr(not(build_host_has_avx512bf16), ignore = "this CPU has no AVX512_BF16: only the portable path can run here")]
#[cfg_attr(
    all(build_host_has_avx512bf16, feature = "exercises"),
    ignore = "runs the task code (inject_lora); graded by tests/t0*.rs"
)]
fn a_bf16_lora_step_is_the_same_on_both_paths() {
    let kernel = {
        let _on = on(Path::Kernel);
        bf16_cases::bf16_lora_step()
    };
    let portable = {
        let _on = on(Path::Portable);
        bf16_cases::bf16_lora_step()
    };
    // Only the order of f32 sums differs: far inside bf16's 2^-9, which a path that did not
    // round its activations misses (measured: 3e-5 on the loss).
    assert!(
        (kernel.0 - portable.0).abs() < 1e-5 * kernel.0.abs(),
        "loss {} on the kernel, {} portable",
        kernel.0,
        portable.0
    );
    assert_eq!(kernel.1.len(), 12, "r2 on q, v, down of two layers: 12 adapter matrices");
    for ((name, gk), (_, gp)) in kernel.1.iter().zip(&portable.1) {
        let scale = gk.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = common::max_abs_diff(gk, gp);
        assert!(scale > 0.0 && diff <= 1e-4 * scale, "{name}: gradients {diff} apart (scale {scale})");
    }
    let scale = kernel.2.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = common::max_abs_diff(&kernel.2, &portable.2);
    assert!(diff <= 1e-5 * scale, "one-token logits {diff} apart (scale {scale})");
}
