//! What the bf16 product means (`src/compute/bf16.rs`), checked on whichever path the process
//! takes: `tests/bf16.rs` runs these on the CPU's own path (the kernel where it has AVX512_BF16),
//! `tests/bf16_portable.rs` with the portable path forced, on every CPU.
//!
//! Both paths round the activations to bf16 and sum exact products in f32. So each matmul is
//! held to an f64 reference that rounds the same way (only f32 summation error apart), and each
//! fused op over a bf16 weight to the same op over the weight widened to f32 with its input
//! rounded first: the tight check that would fail on a path that skipped the rounding. The
//! loose one (bf16 tolerance against the unrounded f32 op) says the op is the right function.

#![allow(dead_code)]

use crate::common::{max_abs_diff, randn, rng, values};
use candle_core::{DType, Tensor, Var};
use half::bf16;
use lora_from_scratch::compute::bf16::{matmul_on, pack_on, Path, Product};
use lora_from_scratch::compute::{fused, ops};

pub fn random_f32(seed: u64, n: usize) -> Vec<f32> {
    values(&randn(&mut rng(seed), &[n], DType::F32)).into_iter().map(|v| v as f32).collect()
}

fn round(v: f32) -> f64 {
    bf16::from_f32(v).to_f64()
}

/// `x W^T` or `x W` in f64, from x rounded to bf16 and the bf16 W; also the sum of |terms| per
/// element, the scale of f32 summation error.
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

/// `path`'s matmul, unpacked and with the weight prepared once (the head's way), against the
/// rounded f64 reference; `c` starts non-zero, so `accumulate` must add and its absence overwrite.
pub fn check_matmul(
    path: Path,
    seed: u64,
    (m, out_f, in_f): (usize, usize, usize),
    product: Product,
    accumulate: bool,
) -> Result<(), String> {
    let (n, k) = if product == Product::XWt { (out_f, in_f) } else { (in_f, out_f) };
    let x = random_f32(seed, m * k);
    let w: Vec<bf16> = random_f32(seed + 1, out_f * in_f).into_iter().map(bf16::from_f32).collect();
    let start = random_f32(seed + 2, m * n);
    let mut unpacked = start.clone();
    matmul_on(path, &mut unpacked, n, &x, &w, (m, out_f, in_f), product, accumulate);
    let prepared = pack_on(path, &w, (out_f, in_f), product);
    if prepared.path() != path {
        return Err(format!("pack_on({path:?}) prepared the weight for {:?}", prepared.path()));
    }
    let mut packed = start.clone();
    lora_from_scratch::compute::bf16::matmul_packed(&mut packed, n, &x, m, &prepared, accumulate);
    let (want, scale) = reference(&x, &w, (m, out_f, in_f), product);
    for (how, c) in [("unpacked", &unpacked), ("packed", &packed)] {
        for e in 0..m * n {
            let want = want[e] + if accumulate { start[e] as f64 } else { 0.0 };
            // f32 sums of k products: each partial sum rounded within 2^-24 of its size.
            let tol = (k as f64 + 2.0) * 2f64.powi(-23) * (scale[e] + start[e].abs() as f64) + 1e-30;
            let got = c[e] as f64;
            if (got - want).abs() > tol {
                return Err(format!(
                    "{path:?} {product:?} m {m} out {out_f} in {in_f} accumulate {accumulate} ({how}): element ({}, {}) \
                     is {got}, want {want} (tolerance {tol:e}); both paths round x to bf16 and sum exact products in f32 \
                     (src/compute/bf16.rs)",
                    e / n,
                    e % n
                ));
            }
        }
    }
    Ok(())
}

/// A tensor of `shape` in bf16 and the same values in f32.
pub fn bf16_weight(seed: u64, shape: &[usize]) -> (Tensor, Tensor) {
    let w16 = randn(&mut rng(seed), shape, DType::F32).to_dtype(DType::BF16).unwrap();
    let w32 = w16.to_dtype(DType::F32).unwrap();
    (w16, w32)
}

/// `t` rounded to bf16 and back to f32.
fn rounded(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap()
}

/// `sum(y * r)` for a fixed random `r`, and `r`.
fn weighted_sum(y: &Tensor) -> (Tensor, Tensor) {
    let r = randn(&mut rng(99), y.dims(), y.dtype());
    ((y * &r).unwrap().sum_all().unwrap(), r)
}

/// `a` within `rel` of b's largest value, named `what`, and b not all zero.
fn within(what: &str, a: &Tensor, b: &Tensor, rel: f64) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    assert_eq!(a.dtype(), DType::F32, "{what}: not f32");
    let (a, b) = (values(a), values(b));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = max_abs_diff(&a, &b);
    assert!(diff <= rel * scale + 1e-6, "{what}: {diff} apart (scale {scale}, tolerance {rel:e} of it)");
    assert!(scale > 0.0, "{what}: all zero");
}

/// Within bf16 tolerance: 2^-7 of the largest value (one rounding of each activation, a few deep).
fn bf16_close(what: &str, a: &Tensor, b: &Tensor) {
    within(what, a, b, 2f64.powi(-7))
}

/// Within f32 summation error: the same products, summed in another order.
fn f32_close(what: &str, a: &Tensor, b: &Tensor) {
    within(what, a, b, 1e-5)
}

/// Each fused op over a bf16 weight against the same op over the weight widened to f32: value
/// and the gradient of every input that tracks one at bf16 tolerance, and the frozen products
/// exactly as "x rounded to bf16, times W" at f32 tolerance.
pub fn fused_ops_over_a_bf16_weight_match_f32() {
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
        bf16_close(&format!("{name}: value"), &y16, &y32);
        let ((s16, r), (s32, _)) = (weighted_sum(&y16), weighted_sum(&y32));
        let (g16, g32) = (s16.backward().unwrap(), s32.backward().unwrap());
        for (n, v) in vars.iter().enumerate() {
            let (Some(a), Some(b)) = (g16.get(v.as_tensor()), g32.get(v.as_tensor())) else {
                panic!("{name}: input {n} has no gradient")
            };
            bf16_close(&format!("{name}: gradient of input {n}"), a, b);
        }
        assert!(g16.get(&w16).is_none(), "{name}: the frozen bf16 weight got a gradient");
        if name == "frozen linear" {
            // Forward: round(x) W^T; backward: dx = round(dy) W, dy = r here.
            f32_close(
                "frozen linear: value = round(x) W^T",
                &y16,
                &rounded(x.as_tensor()).matmul(&w32.t().unwrap()).unwrap(),
            );
            f32_close(
                "frozen linear: dx = round(dy) W",
                g16.get(x.as_tensor()).unwrap(),
                &rounded(&r).matmul(&w32).unwrap(),
            );
        }
    }
}

/// The head + cross-entropy over a bf16 head (SmolLM2's tied embedding under `--bf16`), past one
/// chunk of rows: the loss is the f32 head's loss of the rows rounded to bf16 (f32 tolerance), and
/// loss and the rows' gradient are the f32 head's at bf16 tolerance.
pub fn head_cross_entropy_over_a_bf16_head_matches_f32() {
    let (n, vocab, d) = (300, 517, 40);
    let hidden = Var::from_tensor(&randn(&mut rng(11), &[n, d], DType::F32)).unwrap();
    let (w16, w32) = bf16_weight(12, &[vocab, d]);
    let targets: Vec<u32> = (0..n as u32).map(|t| (t * 37) % vocab as u32).collect();
    let l16 = ops::head_cross_entropy(hidden.as_tensor(), &w16, &targets).unwrap();
    let l32 = ops::head_cross_entropy(hidden.as_tensor(), &w32, &targets).unwrap();
    let lr = ops::head_cross_entropy(&rounded(hidden.as_tensor()), &w32, &targets).unwrap();
    let (v16, v32, vr) =
        (l16.to_scalar::<f32>().unwrap(), l32.to_scalar::<f32>().unwrap(), lr.to_scalar::<f32>().unwrap());
    assert!((v16 - vr).abs() < 1e-5 * vr.abs(), "loss {v16} over bf16, {vr} over f32 with the rows rounded to bf16");
    assert!((v16 - v32).abs() < 1e-2 * v32.abs(), "loss {v16} over bf16, {v32} over f32");
    let (g16, g32) = (l16.backward().unwrap(), l32.backward().unwrap());
    bf16_close(
        "head: gradient of the hidden rows",
        g16.get(hidden.as_tensor()).unwrap(),
        g32.get(hidden.as_tensor()).unwrap(),
    );
    // A trained head cannot be bf16 beside f32 rows: an error that says so, not a wrong gradient.
    let trained = Var::from_tensor(&w16).unwrap();
    let err = ops::head_cross_entropy(hidden.as_tensor(), trained.as_tensor(), &targets).unwrap_err().to_string();
    assert!(err.contains("trained") && err.contains("BF16"), "{err}");
}

/// What [`bf16_lora_step`] gives: the loss, each adapter matrix's gradient by name, and the
/// one-token logits.
pub type LoraStep = (f64, Vec<(String, Vec<f64>)>, Vec<f64>);

/// One LoRA step of the tiny Llama with a bf16 base (r2 on q, v, down; B off zero so every
/// adapter gets a gradient): the loss, every adapter gradient, and the logits of a one-token
/// forward (decoding's few-rows shape).
pub fn bf16_lora_step() -> LoraStep {
    use lora_from_scratch::models::load::{load_model, LoadOptions};
    use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
    use lora_from_scratch::LoraConfig;
    let opts = LoadOptions { dtype: DType::BF16, ..Default::default() };
    let mut m = load_model("tests/fixtures/tiny-llama", &opts).unwrap();
    inject_lora(m.model.as_mut(), &LoraConfig::new(2, 4.0, &["q_proj", "v_proj", "down_proj"])).unwrap();
    for (_, v) in get_lora_parameters(m.model.as_ref()) {
        v.set(&(v.ones_like().unwrap() * 0.1).unwrap()).unwrap();
    }
    let cpu = candle_core::Device::Cpu;
    let ids = Tensor::new(&[[3u32, 17, 5, 9, 28, 11, 40, 2, 7, 19, 23, 4]], &cpu).unwrap();
    let logits = m.model.forward(&ids, None, true).unwrap();
    let targets = ids.narrow(1, 1, 11).unwrap().flatten_all().unwrap();
    let loss = ops::cross_entropy(&logits.narrow(1, 0, 11).unwrap().flatten_to(1).unwrap(), &targets).unwrap();
    let grads = loss.backward().unwrap();
    let g = get_lora_parameters(m.model.as_ref())
        .into_iter()
        .map(|(n, v)| (n, values(grads.get(v.as_tensor()).expect("every adapter gets a gradient"))))
        .collect();
    let one = m.model.forward(&Tensor::new(&[[17u32]], &cpu).unwrap(), None, false).unwrap();
    (f64::from(loss.to_scalar::<f32>().unwrap()), g, values(&one))
}

/// [`pack_many`](lora_from_scratch::compute::bf16::pack_many) (the head's forward and backward
/// from one preparation) on the process's path: each prepared weight is for that path and gives,
/// bit for bit, what the unprepared matmul gives for its product.
pub fn pack_many_prepares_each_product() {
    use lora_from_scratch::compute::bf16::{matmul, matmul_packed, pack_many, path};
    let (m, out_f, in_f) = (20, 45, 70);
    let w: Vec<bf16> = random_f32(31, out_f * in_f).into_iter().map(bf16::from_f32).collect();
    let prepared = pack_many(&w, (out_f, in_f), &[Product::XWt, Product::XW]);
    assert_eq!(prepared.len(), 2, "one prepared weight per product");
    for (p, product) in prepared.iter().zip([Product::XWt, Product::XW]) {
        assert_eq!(p.path(), path(), "{product:?}: prepared for {:?} on {:?}", p.path(), path());
        let (n, k) = if product == Product::XWt { (out_f, in_f) } else { (in_f, out_f) };
        let x = random_f32(32, m * k);
        let (mut packed, mut unpacked) = (vec![0f32; m * n], vec![0f32; m * n]);
        matmul_packed(&mut packed, n, &x, m, p, false);
        matmul(&mut unpacked, n, &x, &w, (m, out_f, in_f), product, false);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&packed), bits(&unpacked), "{product:?}: prepared and unprepared differ");
    }
}
