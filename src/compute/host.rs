//! Where a speed figure comes from: the CPU, the thread count, and the matmul speed measured on
//! this host at the shapes a training step multiplies.
//!
//! Hosts of one machine kind differ by 2x in matmul speed, so "tokens per second" alone says
//! little. A benchmark line that carries the measured GFLOP/s and the fraction of it the step
//! reached (its roofline fraction) can be compared across hosts.

use std::collections::BTreeMap;
use std::time::Instant;

/// The CPU a figure was measured on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Host {
    /// `model name` of /proc/cpuinfo ("AMD EPYC", "Intel(R) Xeon(R) ...").
    pub cpu_model: String,
    /// `cpu family` (AMD: 25 is Zen 3 / Zen 4, 26 Zen 5; Intel: 6).
    pub cpu_family: Option<u32>,
    /// `model` of /proc/cpuinfo, which tells generations of one family apart.
    pub cpu_model_number: Option<u32>,
    /// The threads candle and the fused ops use.
    pub threads: usize,
    /// Whether the CPU has AVX512_BF16 (the bf16 kernel of [`crate::compute::bf16`]).
    pub avx512_bf16: bool,
}

impl Host {
    /// This machine, as /proc/cpuinfo describes it (fields left empty where it cannot be read).
    pub fn detect() -> Host {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        Host {
            cpu_model: field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            cpu_family: field("cpu family").and_then(|v| v.parse().ok()),
            cpu_model_number: field("model").and_then(|v| v.parse().ok()),
            threads: crate::compute::matmul::thread_count(),
            avx512_bf16: crate::compute::bf16::kernel_available(),
        }
    }
}

/// FLOPs of `x W^T` over `m` rows for every shape: 2 m in out each.
pub fn forward_flops(m: usize, shapes: &BTreeMap<(usize, usize), usize>) -> f64 {
    shapes.iter().map(|(&(i, o), &count)| 2.0 * (m * i * o * count) as f64).sum()
}

/// The speed of `x W^T` with `m` rows at these shapes, on this host, in GFLOP/s: the fastest call
/// of each shape in at least 100 ms, weighted by its FLOPs in the step (total FLOPs / total time). With
/// `bf16`, the weight is bf16 and the matmul is the one `--bf16` runs ([`crate::compute::bf16`]);
/// else f32 through the fused ops' gemm.
pub fn matmul_gflops(m: usize, shapes: &BTreeMap<(usize, usize), usize>, bf16: bool) -> f64 {
    let mut flops = 0.0;
    let mut seconds = 0.0;
    for (&(in_f, out_f), &count) in shapes {
        let x: Vec<f32> = (0..m * in_f).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w: Vec<f32> = (0..out_f * in_f).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w16: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let mut c = vec![0f32; m * out_f];
        let mut run = || {
            if bf16 {
                crate::compute::bf16::matmul(
                    &mut c,
                    out_f,
                    &x,
                    &w16,
                    (m, out_f, in_f),
                    crate::compute::bf16::Product::XWt,
                    false,
                )
            } else {
                use crate::compute::matmul::{matmul, Mat};
                matmul(&mut c, out_f, (m, out_f, in_f), Mat::rows(&x, in_f), Mat::rows(&w, in_f).t(), false, true)
            }
        };
        run();
        // The fastest of the calls in 100 ms: a roofline is what the host can do, and on a
        // shared host a slow call says more about the neighbours than about the matmul.
        let (mut per_call, start) = (f64::INFINITY, Instant::now());
        let mut reps = 0;
        while reps < 3 || start.elapsed().as_secs_f64() < 0.1 {
            let t = Instant::now();
            run();
            per_call = per_call.min(t.elapsed().as_secs_f64());
            reps += 1;
        }
        flops += 2.0 * (m * in_f * out_f) as f64 * count as f64;
        seconds += per_call * count as f64;
    }
    flops / seconds / 1e9
}
