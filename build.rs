//! Tells the tests whether the CPU that builds them has AVX512_BF16, so that the tests of the
//! bf16 kernel (`tests/bf16.rs`) show as ignored, with the reason, on a CPU without it, where
//! the library itself takes the portable path (`src/compute/bf16.rs`). The library does not use
//! this: it detects the instruction at run time.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(build_host_has_avx512bf16)");
    // Only for a native build: a cross build's host CPU says nothing about the target's.
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    #[cfg(target_arch = "x86_64")]
    if native
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
    {
        println!("cargo::rustc-cfg=build_host_has_avx512bf16");
    }
    let _ = native;
}
