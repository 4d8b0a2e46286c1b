//! The bf16 matmul (`compute::bf16`) and the fused ops over a bf16 frozen weight, which is what
//! `--bf16` runs on the CPU: the base's matrices in bf16, activations, adapters and the loss in
//! f32.
//!
//! The kernel rounds the activations to bf16 (round to nearest even) and sums exact products in
//! f32, so against a reference that rounds the same way and sums in f64 it differs only by f32
//! summation error: the first property holds it to that. The fused ops are then compared with the
//! same ops over the weight widened to f32, values and every gradient, at bf16 tolerance (each
//! activation rounded once: 2^-9 relative).

mod common;

use candle_core::{DType, Tensor, Var};
use common::{max_abs_diff, proptest_config, randn, rng, values};
use half::bf16;
use lora_from_scratch::compute::bf16::{kernel_available, matmul, matmul_packed, pack, Product};
use lora_from_scratch::compute::{fused, ops};
use proptest::prelude::*;

fn random_f32(seed: u64, n: usize) -> Vec<f32> {
    values(&randn(&mut rng(seed), &[n], DType::F32)).into_iter().map(|v| v as f32).collect()
}

fn round(v: f32) -> f64 {
    bf16::from_f32(v).to_f64()
}

/// `x W^T` or `x W` in f64, from x rounded to bf16 (as the kernel packs it) and the bf16 W;
/// also the sum of |terms| per element, the scale of f32 summation error.
fn reference(x: &[f32], w: &[bf16], (m, out_f, in_f): (usize, usize, usize), product: Product) -> (Vec<f64>, Vec<f64>) {
    let (n, k) = if product == Product::XWt { (out_f, in_f) } else { (in_f, out_f) };
    let mut want = vec![0f64; m * n];
    let mut scale = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let wv = if product == Product::XWt { w[j * in_f + p] } else { w[p * in_f + j] }.to_f64();
                let t = round(x[i * k + p]) * wv;
                want[i * n + j] += t;
                scale[i * n + j] += t.abs();
            }
        }
    }
    (want, scale)
}

fn check_kernel(
    seed: u64,
    (m, out_f, in_f): (usize, usize, usize),
    product: Product,
    accumulate: bool,
) -> Result<(), String> {
    let (n, k) = if product == Product::XWt { (out_f, in_f) } else { (in_f, out_f) };
    let x = random_f32(seed, m * k);
    let w: Vec<bf16> = random_f32(seed + 1, out_f * in_f).into_iter().map(bf16::from_f32).collect();
    // c starts non-zero, to see that `accumulate` adds to it and that its absence overwrites it.
    let start = random_f32(seed + 2, m * n);
    let mut c = start.clone();
    matmul(&mut c, n, &x, &w, (m, out_f, in_f), product, accumulate);
    let (want, scale) = reference(&x, &w, (m, out_f, in_f), product);
    // The weight packed once (the head's path) is held to the same reference.
    let mut outputs = vec![("unpacked", c)];
    if let Some(packed) = pack(&w, (out_f, in_f), product) {
        let mut c2 = start.clone();
        matmul_packed(&mut c2, n, &x, m, &packed, accumulate);
        outputs.push(("packed", c2));
    }
    for (path, c) in &outputs {
        for e in 0..m * n {
            let want = want[e] + if accumulate { start[e] as f64 } else { 0.0 };
            // f32 sums of k products: each partial sum rounded within 2^-24 of its size.
            let tol = (k as f64 + 2.0) * 2f64.powi(-23) * (scale[e] + start[e].abs() as f64) + 1e-30;
            let got = c[e] as f64;
            if (got - want).abs() > tol {
                return Err(format!(
                "{product:?} m {m} out {out_f} in {in_f} accumulate {accumulate} ({path}): element ({}, {}) is {got}, want {want} (tolerance {tol:e})",
                e / n,
                e % n
            ));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(48))]

    /// Every shape, including partial tiles (12 x 32), odd k, one-element dims and the few-rows
/// path of decoding (up to 8 rows of `x W^T`).
    #[test]
    fn kernel_sums_the_rounded_products(seed in 0u64..1000, m in 1usize..30, out_f in 1usize..70, in_f in 1usize..70,
                                        xw in any::<bool>(), accumulate in any::<bool>()) {
        let product = if xw { Product::XW } else { Product::XWt };
        if let Err(e) = check_kernel(seed, (m, out_f, in_f), product, accumulate) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// Shapes past one k block (384 pairs) and many row and column panels, as in SmolLM2's MLP.
#[test]
fn kernel_is_exact_past_one_block() {
    if !kernel_available() {
        eprintln!("this CPU has no AVX512_BF16: the portable path is what runs (tests/bf16_portable.rs)");
    }
    for (shape, product) in
        [((37, 70, 1537), Product::XWt), ((25, 1537, 66), Product::XW), ((50, 192, 576), Product::XW)]
    {
        check_kernel(7, shape, product, false).unwrap();
        check_kernel(8, shape, product, true).unwrap();
    }
}

/// A tensor of `shape` in bf16 and the same values in f32.
fn bf16_weight(seed: u64, shape: &[usize]) -> (Tensor, Tensor) {
    let w16 = randn(&mut rng(seed), shape, DType::F32).to_dtype(DType::BF16).unwrap();
    let w32 = w16.to_dtype(DType::F32).unwrap();
    (w16, w32)
}

/// `sum(y * r)` for a fixed random `r`.
fn weighted_sum(y: &Tensor) -> Tensor {
    let r = randn(&mut rng(99), y.dims(), y.dtype());
    (y * r).unwrap().sum_all().unwrap()
}

/// `a` within bf16 tolerance of `b`: 2^-7 of b's largest value (one rounding of each
/// activation, a few deep), named `what`.
fn close(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    assert_eq!(a.dtype(), DType::F32, "{what}: not f32");
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&a, &b);
    assert!(diff <= 2f64.powi(-7) * scale + 1e-6, "{what}: {diff} apart (scale {scale})");
    // And not merely close by being zero: the two are the same function.
    assert!(scale > 0.0, "{what}: all zero");
}

/// Each fused op over a bf16 weight against the same op over the weight widened to f32: value
/// and the gradient of every input that tracks one.
#[test]
fn fused_ops_over_a_bf16_weight_match_f32() {
    let (m, i, o, r) = (37, 70, 45, 4);
    let x = Var::from_tensor(&randn(&mut rng(1), &[m, i], DType::F32)).unwrap();
    let h = Var::from_tensor(&randn(&mut rng(2), &[m, o], DType::F32)).unwrap();
    let a = Var::from_tensor(&randn(&mut rng(3), &[r, i], DType::F32)).unwrap();
    let b = Var::from_tensor(&randn(&mut rng(4), &[o, r], DType::F32)).unwrap();
    let bias = randn(&mut rng(5), &[o], DType::F32);
    let (w16, w32) = bf16_weight(6, &[o, i]);
    type Op<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
    let cases: Vec<(&str, Op, Vec<&Var>)> = vec![
        ("frozen linear", Box::new(|w: &Tensor| ops::frozen_linear(x.as_tensor(), w).unwrap()), vec![&x]),
        (
            "lora linear",
            Box::new(|w: &Tensor| {
                fused::lora_linear::lora_linear(x.as_tensor(), w, Some(&bias), a.as_tensor(), b.as_tensor(), 2.0)
                    .unwrap()
            }),
            vec![&x, &a, &b],
        ),
        (
            "residual linear",
            Box::new(|w: &Tensor| {
                fused::residual_linear::residual_linear(h.as_tensor(), x.as_tensor(), w, Some(&bias)).unwrap()
            }),
            vec![&x, &h],
        ),
    ];
    for (name, op, vars) in cases {
        let (y16, y32) = (op(&w16), op(&w32));
        close(&format!("{name}: value"), &y16, &y32);
        let (g16, g32) = (weighted_sum(&y16).backward().unwrap(), weighted_sum(&y32).backward().unwrap());
        for (n, v) in vars.iter().enumerate() {
            let (Some(a), Some(b)) = (g16.get(v.as_tensor()), g32.get(v.as_tensor())) else {
                panic!("{name}: input {n} has no gradient")
            };
            close(&format!("{name}: gradient of input {n}"), a, b);
        }
        assert!(g16.get(&w16).is_none(), "{name}: the frozen bf16 weight got a gradient");
    }
}

/// The head + cross-entropy over a bf16 head (SmolLM2's tied embedding under `--bf16`), past
/// one chunk of rows: loss and the hidden rows' gradient as over the f32 head.
#[test]
fn head_cross_entropy_over_a_bf16_head_matches_f32() {
    let (n, vocab, d) = (300, 517, 40);
    let hidden = Var::from_tensor(&randn(&mut rng(11), &[n, d], DType::F32)).unwrap();
    let (w16, w32) = bf16_weight(12, &[vocab, d]);
    let targets: Vec<u32> = (0..n as u32).map(|t| (t * 37) % vocab as u32).collect();
    let l16 = ops::head_cross_entropy(hidden.as_tensor(), &w16, &targets).unwrap();
    let l32 = ops::head_cross_entropy(hidden.as_tensor(), &w32, &targets).unwrap();
    let (v16, v32) = (l16.to_scalar::<f32>().unwrap(), l32.to_scalar::<f32>().unwrap());
    assert!((v16 - v32).abs() < 1e-2 * v32.abs(), "loss {v16} over bf16, {v32} over f32");
    let (g16, g32) = (l16.backward().unwrap(), l32.backward().unwrap());
    close(
        "head: gradient of the hidden rows",
        g16.get(hidden.as_tensor()).unwrap(),
        g32.get(hidden.as_tensor()).unwrap(),
    );
    // A trained head cannot be bf16 beside f32 rows: an error that says so, not a wrong gradient.
    let trained = Var::from_tensor(&w16).unwrap();
    let err = ops::head_cross_entropy(hidden.as_tensor(), trained.as_tensor(), &targets).unwrap_err().to_string();
    assert!(err.contains("trained") && err.contains("BF16"), "{err}");
}

/// Bad shapes are errors that name them, not panics.
#[test]
fn a_wrong_input_width_is_an_error() {
    let (w16, _) = bf16_weight(1, &[8, 6]);
    let x = randn(&mut rng(2), &[3, 5], DType::F32);
    let err = ops::linear_forward(&x, &w16, None).unwrap_err().to_string();
    assert!(err.contains("[..., 6]") && err.contains("[3, 5]"), "{err}");
}

/// Full fine-tuning under `--bf16` on the CPU trains f32 weights (the f32 master copy), and the
/// frozen base stays bf16 where LoRA trains beside it.
#[test]
fn full_fine_tuning_of_a_bf16_model_trains_f32_weights() {
    use lora_from_scratch::models::load::{load_model, LoadOptions};
    let opts = LoadOptions { dtype: DType::BF16, ..Default::default() };
    let mut m = load_model("tests/fixtures/tiny-llama", &opts).unwrap();
    let before: Vec<DType> = m.model.linears().iter().map(|(_, s)| s.base_weight().unwrap().dtype()).collect();
    assert!(before.iter().all(|&d| d == DType::BF16), "a bf16 model's matrices are bf16: {before:?}");
    let vars = lora_from_scratch::experiments::full::unfreeze_all(m.model.as_mut()).unwrap();
    assert!(!vars.is_empty());
    for (name, v) in &vars {
        assert_eq!(v.dtype(), DType::F32, "{name} is trained in {:?}", v.dtype());
    }
    let ids = Tensor::new(&[[3u32, 17, 5, 9]], &candle_core::Device::Cpu).unwrap();
    let loss = m.model.forward(&ids, None, true).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert!(vars.iter().all(|(_, v)| grads.get(v.as_tensor()).is_some()), "every trained weight gets a gradient");
}
