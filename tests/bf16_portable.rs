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

/// The head + cross-entropy over a bf16 head on the portable path (the head widened once) gives
/// the loss and gradient of the same head in f32.
#[test]
fn portable_head_cross_entropy_matches_f32() {
    use candle_core::{DType, Device, Tensor, Var};
    set_kernel_enabled(false);
    let (n, vocab, d) = (200, 77, 24);
    let h: Vec<f32> = (0..n * d).map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0).collect();
    let w: Vec<f32> = (0..vocab * d).map(|i| ((i * 104729) % 89) as f32 / 45.0 - 1.0).collect();
    let hidden = Var::from_tensor(&Tensor::from_vec(h, (n, d), &Device::Cpu).unwrap()).unwrap();
    let w16 = Tensor::from_vec(w, (vocab, d), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
    let w32 = w16.to_dtype(DType::F32).unwrap();
    let targets: Vec<u32> = (0..n as u32).map(|t| (t * 13) % vocab as u32).collect();
    let ce = |w: &Tensor| lora_from_scratch::compute::ops::head_cross_entropy(hidden.as_tensor(), w, &targets).unwrap();
    let (l16, l32) = (ce(&w16), ce(&w32));
    let (a, b) = (l16.to_scalar::<f32>().unwrap(), l32.to_scalar::<f32>().unwrap());
    // The portable path does not round the activations: the same function of the same weights.
    assert!((a - b).abs() < 1e-5 * b.abs(), "loss {a} over bf16, {b} over f32");
    let (g16, g32) = (l16.backward().unwrap(), l32.backward().unwrap());
    let diff = (g16.get(hidden.as_tensor()).unwrap() - g32.get(hidden.as_tensor()).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "the hidden rows' gradients differ by {diff}");
}
