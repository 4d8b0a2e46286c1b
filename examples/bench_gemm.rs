//! Throughput of candle's CPU matmul at a SmolLM2 training step's shapes (GFLOP/s).
use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(m, k, n) in
        &[(1024usize, 576usize, 1536usize), (1024, 1536, 576), (1024, 576, 576), (1024, 576, 192), (1024, 576, 49152)]
    {
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let b = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let _ = a.matmul(&b.t()?)?;
        let reps = if n > 10000 { 3 } else { 20 };
        let t = Instant::now();
        for _ in 0..reps {
            let _ = a.matmul(&b.t()?)?;
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{m}x{k} @ {k}x{n}: {:.1} ms, {:.0} GFLOP/s", s * 1e3, 2.0 * (m * k * n) as f64 / s / 1e9);
    }
    Ok(())
}
