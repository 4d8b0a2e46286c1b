//! The portable path of `compute::bf16` (CPUs without AVX512_BF16: the weight widened to f32,
//! candle's gemm) forced on this CPU, against an f64 reference. Its own test binary, since the
//! switch is process-wide.

use half::bf16;
use lora_from_scratch::compute::bf16::{kernel_in_use, matmul, set_kernel_enabled, Product};

#[test]
fn portable_path_is_exact_in_f32() {
    set_kernel_enabled(false);
    assert!(!kernel_in_use());
    let (m, out_f, in_f) = (13, 33, 50);
    let x: Vec<f32> = (0..m * in_f).map(|i| ((i * 7919) % 97) as f32 / 13.0 - 3.0).collect();
    let w: Vec<bf16> = (0..out_f * in_f).map(|i| bf16::from_f32(((i * 104729) % 89) as f32 / 11.0 - 4.0)).collect();
    for product in [Product::XWt, Product::XW] {
        let (n, k) = if product == Product::XWt { (out_f, in_f) } else { (in_f, out_f) };
        let x = &x[..m * k];
        let mut c = vec![1f32; m * n];
        matmul(&mut c, n, x, &w, (m, out_f, in_f), product, true);
        for i in 0..m {
            for j in 0..n {
                // Not rounded to bf16 here: the portable path multiplies the f32 activations.
                let want: f64 = 1.0
                    + (0..k)
                        .map(|p| {
                            let wv = if product == Product::XWt { w[j * in_f + p] } else { w[p * in_f + j] };
                            x[i * k + p] as f64 * wv.to_f64()
                        })
                        .sum::<f64>();
                let got = c[i * n + j] as f64;
                assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{product:?} ({i}, {j}): {got}, want {want}");
            }
        }
    }
}
