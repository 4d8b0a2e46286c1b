//! Grader for task 1.1, `LoraLayer` (book/src/t01_lora_layer.md).
//!
//! Run: `cargo test --features exercises --test t01_lora_layer`.
//! Each property says in its failure message what broke and why it matters to LoRA.

#[macro_use]
mod common;

use candle_core::{DType, Tensor, Var};
use common::*;
use lora_from_scratch::tasks::t01_lora_layer::lora_scaling;
use lora_from_scratch::tasks::t01_lora_layer::LoraLayer;
use lora_from_scratch::{LoraConfig, LoraInit};
use proptest::prelude::*;

fn config(r: usize, alpha: f64) -> LoraConfig {
    LoraConfig::new(r, alpha, &["q_proj"])
}

/// An adapter with random A and B (as after some training), in `dtype`.
fn trained(rng: &mut rand::rngs::StdRng, inp: usize, out: usize, cfg: &LoraConfig, dtype: DType) -> LoraLayer {
    let a = randn(rng, &[cfg.r, inp], dtype);
    let b = randn(rng, &[out, cfg.r], dtype);
    LoraLayer::from_tensors(&a, &b, cfg).unwrap()
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn scaling_is_alpha_over_r(alpha in 0.5f64..64.0, r in 1usize..65) {
        book("t01_lora_layer", "Why alpha / r");
        prop_assert_close!([lora_scaling(alpha, r, false)], [alpha / r as f64], 1e-12,
            "scaling must be alpha / r: it keeps the update's size steady when r changes");
        prop_assert_close!([lora_scaling(alpha, r, true)], [alpha / (r as f64).sqrt()], 1e-12,
            "rsLoRA scaling must be alpha / sqrt(r) (Kalajdzievski 2023)");
        let mut cfg = config(r, alpha);
        let layer = LoraLayer::new(4, 3, &cfg, &mut rng(0), DType::F32, &CPU).unwrap();
        prop_assert_close!([layer.scaling()], [alpha / r as f64], 1e-12, "LoraLayer::new must use alpha / r");
        cfg.use_rslora = true;
        let layer = LoraLayer::new(4, 3, &cfg, &mut rng(0), DType::F32, &CPU).unwrap();
        prop_assert_close!([layer.scaling()], [alpha / (r as f64).sqrt()], 1e-12,
            "LoraLayer::new must use alpha / sqrt(r) when use_rslora is set");
    }

    #[test]
    fn shapes_follow_the_paper(inp in 1usize..40, out in 1usize..40, r in 1usize..9,
                               batch in 1usize..4, seq in 1usize..6, seed in any::<u64>()) {
        book("t01_lora_layer", "Shapes");
        let layer = LoraLayer::new(inp, out, &config(r, 2.0 * r as f64), &mut rng(seed), DType::F32, &CPU).unwrap();
        prop_assert_eq!(layer.a().tensor().dims(), &[r, inp], "A must be [r, in]");
        prop_assert_eq!(layer.b().tensor().dims(), &[out, r], "B must be [out, r]");
        prop_assert!(layer.a().is_trainable() && layer.b().is_trainable(), "A and B must be trainable Vars");
        let x3 = randn(&mut rng(seed ^ 1), &[batch, seq, inp], DType::F32);
        prop_assert_eq!(layer.forward(&x3, false).unwrap().dims().to_vec(), vec![batch, seq, out],
            "forward on [batch, seq, in] must give [batch, seq, out]");
        let x2 = randn(&mut rng(seed ^ 2), &[batch * seq, inp], DType::F32);
        prop_assert_eq!(layer.forward(&x2, false).unwrap().dims().to_vec(), vec![batch * seq, out],
            "forward on [n, in] must give [n, out]");
    }

    #[test]
    fn the_layer_reports_what_it_was_built_with(inp in 1usize..40, out in 1usize..40, r in 1usize..9,
                                                alpha in 0.5f64..64.0, dropout in 0.0f32..0.9,
                                                rslora in any::<bool>(), seed in any::<u64>()) {
        book("t01_lora_layer", "Shapes");
        let cfg = LoraConfig { dropout, use_rslora: rslora, ..config(r, alpha) };
        let fresh = LoraLayer::new(inp, out, &cfg, &mut rng(seed), DType::F32, &CPU).unwrap();
        let loaded = trained(&mut rng(seed), inp, out, &cfg, DType::F32);
        for (how, layer) in [("new", &fresh), ("from_tensors", &loaded)] {
            prop_assert_eq!((layer.rank(), layer.in_features(), layer.out_features()), (r, inp, out),
                "{}: rank(), in_features() and out_features() must give r, in and out", how);
            prop_assert_close!([layer.scaling()], [lora_scaling(alpha, r, rslora)], 1e-12,
                "{}: scaling() must be the config's alpha / r (alpha / sqrt(r) with rsLoRA)", how);
            prop_assert_eq!(layer.dropout(), dropout, "{}: dropout() must be the config's dropout probability", how);
        }
    }

    #[test]
    fn b_starts_at_zero_so_the_update_is_zero(inp in 1usize..40, out in 1usize..40, r in 1usize..9,
                                              seed in any::<u64>(), gaussian in any::<bool>()) {
        book("t01_lora_layer", "Why B starts at zero");
        let mut cfg = config(r, 16.0);
        cfg.init = if gaussian { LoraInit::Gaussian } else { LoraInit::KaimingUniform };
        let layer = LoraLayer::new(inp, out, &cfg, &mut rng(seed), DType::F32, &CPU).unwrap();
        prop_assert!(values(layer.b().tensor()).iter().all(|v| *v == 0.0),
            "B must start at zero, so that B A = 0 and training starts from the base model");
        prop_assert!(values(layer.a().tensor()).iter().any(|v| *v != 0.0),
            "A must start random: with A = 0 as well, no gradient would ever reach A or B");
        let x = randn(&mut rng(seed ^ 3), &[3, inp], DType::F32);
        prop_assert!(values(&layer.forward(&x, false).unwrap()).iter().all(|v| *v == 0.0),
            "at init the adapter's output must be exactly zero");
    }

    #[test]
    fn a_is_initialised_as_peft_does(inp in 64usize..200, r in 2usize..9, seed in any::<u64>()) {
        book("t01_lora_layer", "How A starts");
        let layer = LoraLayer::new(inp, 8, &config(r, 8.0), &mut rng(seed), DType::F32, &CPU).unwrap();
        let a = values(layer.a().tensor());
        let bound = 1.0 / (inp as f64).sqrt();
        prop_assert!(a.iter().all(|v| v.abs() <= bound + 1e-7),
            "Kaiming-uniform A (PEFT's default) must lie in [-1/sqrt(in), 1/sqrt(in)]");
        let std = (a.iter().map(|v| v * v).sum::<f64>() / a.len() as f64).sqrt();
        let expected = bound / 3f64.sqrt();
        prop_assert_close!([std], [expected], 0.3 * expected,
            "Kaiming-uniform A should have std 1/sqrt(3 in) (within 30 %)");

        let mut cfg = config(r, 8.0);
        cfg.init = LoraInit::Gaussian;
        let layer = LoraLayer::new(inp, 8, &cfg, &mut rng(seed), DType::F32, &CPU).unwrap();
        let a = values(layer.a().tensor());
        let std = (a.iter().map(|v| v * v).sum::<f64>() / a.len() as f64).sqrt();
        let expected = 1.0 / r as f64;
        prop_assert_close!([std], [expected], 0.3 * expected,
            "gaussian A (PEFT's init_lora_weights=\"gaussian\") should have std 1/r (within 30 %)");
    }

    #[test]
    fn forward_is_scaling_times_x_at_bt(inp in 1usize..24, out in 1usize..24, r in 1usize..7,
                                        n in 1usize..6, alpha in 0.5f64..32.0, seed in any::<u64>()) {
        book("t01_lora_layer", "The forward pass");
        let cfg = config(r, alpha);
        let layer = trained(&mut rng(seed), inp, out, &cfg, DType::F32);
        let x = randn(&mut rng(seed ^ 4), &[n, inp], DType::F32);
        let got = values(&layer.forward(&x, false).unwrap());
        // Reference by plain loops: h = x A^T, y = scaling * h B^T.
        let h = ref_matmul_t(&values(&x), n, inp, &values(layer.a().tensor()), r);
        let y: Vec<f64> = ref_matmul_t(&h, n, r, &values(layer.b().tensor()), out)
            .into_iter().map(|v| v * alpha / r as f64).collect();
        let scale = y.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        prop_assert_close!(got, y, 1e-5 * scale, "forward must be (alpha / r) * x A^T B^T");
    }

    #[test]
    fn gradients_match_finite_differences(inp in 1usize..10, out in 1usize..10, r in 1usize..5, seed in any::<u64>()) {
        book("t01_lora_layer", "Gradients");
        let cfg = config(r, 3.0);
        let layer = trained(&mut rng(seed), inp, out, &cfg, DType::F64);
        let w = randn(&mut rng(seed ^ 5), &[2, out], DType::F64);
        // d loss / d x: the gradient that trains everything below this layer.
        let x = Var::from_tensor(&randn(&mut rng(seed ^ 6), &[2, inp], DType::F64)).unwrap();
        let check = finite_difference_check(&x, |x| (layer.forward(x, false).unwrap() * &w).unwrap().sum_all().unwrap(), 40);
        prop_assert!(check.is_ok(), "input gradient of the adapter is wrong: {}", check.unwrap_err());
        // d loss / d A and d loss / d B against their closed forms.
        let (a0, b0) = (layer.a().tensor().clone(), layer.b().tensor().clone());
        let xv = randn(&mut rng(seed ^ 7), &[2, inp], DType::F64);
        let loss = (layer.forward(&xv, false).unwrap() * &w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let ga = values(grads.get(layer.a().tensor()).expect("A must receive a gradient"));
        let gb = values(grads.get(layer.b().tensor()).expect("B must receive a gradient"));
        // Closed forms: y = s x A^T B^T, loss = sum(w * y):
        // dL/dB = s w^T (x A^T), dL/dA = s (w B)^T x.
        let s = cfg.alpha / r as f64;
        let (xa, av, bv, wv) = (values(&xv), values(&a0), values(&b0), values(&w));
        let h = ref_matmul_t(&xa, 2, inp, &av, r); // [2, r]
        let mut gb_ref = vec![0.0; out * r];
        let mut ga_ref = vec![0.0; r * inp];
        for i in 0..2 {
            for o in 0..out {
                for k in 0..r {
                    gb_ref[o * r + k] += s * wv[i * out + o] * h[i * r + k];
                    for j in 0..inp {
                        ga_ref[k * inp + j] += s * wv[i * out + o] * bv[o * r + k] * xa[i * inp + j];
                    }
                }
            }
        }
        prop_assert_close!(gb, gb_ref, 1e-9, "d loss / d B is wrong: B would be trained wrongly");
        prop_assert_close!(ga, ga_ref, 1e-9, "d loss / d A is wrong: A would be trained wrongly");
    }
}

#[test]
fn at_init_only_b_gets_a_gradient_then_both_do() {
    book("t01_lora_layer", "Why B starts at zero");
    let cfg = config(4, 8.0);
    let layer = LoraLayer::new(12, 10, &cfg, &mut rng(7), DType::F32, &CPU).unwrap();
    let x = randn(&mut rng(8), &[5, 12], DType::F32);
    let target = randn(&mut rng(9), &[5, 10], DType::F32);
    let loss = |l: &LoraLayer| (l.forward(&x, true).unwrap() * &target).unwrap().sum_all().unwrap();

    let grads = loss(&layer).backward().unwrap();
    let ga = values(grads.get(layer.a().tensor()).expect("A must be in the graph"));
    let gb = values(grads.get(layer.b().tensor()).expect("B must be in the graph"));
    assert!(ga.iter().all(|v| *v == 0.0), "at init dL/dA = B^T (...) must be zero because B is zero");
    assert!(gb.iter().any(|v| *v != 0.0), "at init B must get a gradient, or the adapter could never start learning");

    // One SGD step moves B away from zero; from then on A is trained too.
    let b = layer.b().var().unwrap();
    b.set(&(b.as_tensor() - (grads.get(b.as_tensor()).unwrap() * 0.1).unwrap()).unwrap()).unwrap();
    let grads = loss(&layer).backward().unwrap();
    let ga = values(grads.get(layer.a().tensor()).unwrap());
    assert!(ga.iter().any(|v| *v != 0.0), "after one step B != 0, so A must get a gradient too");
}

#[test]
fn the_same_seed_draws_the_same_a() {
    book("t01_lora_layer", "How A starts");
    let cfg = config(4, 8.0);
    let a1 = LoraLayer::new(16, 8, &cfg, &mut rng(1), DType::F32, &CPU).unwrap();
    let a2 = LoraLayer::new(16, 8, &cfg, &mut rng(1), DType::F32, &CPU).unwrap();
    let a3 = LoraLayer::new(16, 8, &cfg, &mut rng(2), DType::F32, &CPU).unwrap();
    assert_eq!(bits(a1.a().tensor()), bits(a2.a().tensor()), "A must come from the given rng only, so runs repeat");
    assert_ne!(bits(a1.a().tensor()), bits(a3.a().tensor()), "different seeds must draw different A");
}

#[test]
fn dropout_acts_in_training_only() {
    book("t01_lora_layer", "Dropout");
    let mut cfg = config(4, 4.0);
    cfg.dropout = 0.5;
    let layer = trained(&mut rng(3), 32, 16, &cfg, DType::F32);
    let mut no_dropout = cfg.clone();
    no_dropout.dropout = 0.0;
    let plain = LoraLayer::from_tensors(layer.a().tensor(), layer.b().tensor(), &no_dropout).unwrap();
    let x = randn(&mut rng(4), &[8, 32], DType::F32);
    assert_eq!(
        bits(&layer.forward(&x, false).unwrap()),
        bits(&plain.forward(&x, false).unwrap()),
        "outside training, dropout must do nothing"
    );
    assert_ne!(
        bits(&layer.forward(&x, true).unwrap()),
        bits(&plain.forward(&x, true).unwrap()),
        "in training, dropout p = 0.5 must change the adapter's output"
    );
}

#[test]
fn bad_shapes_are_errors() {
    book("t01_lora_layer", "Shapes");
    let layer = LoraLayer::new(8, 4, &config(2, 4.0), &mut rng(0), DType::F32, &CPU).unwrap();
    let err = layer.forward(&Tensor::zeros((3, 7), DType::F32, &CPU).unwrap(), false).unwrap_err();
    assert!(
        err.to_string().contains("LoRA input"),
        "a wrong input width must be an error naming the LoRA input: {err}"
    );

    let a = Tensor::zeros((3, 8), DType::F32, &CPU).unwrap();
    let b = Tensor::zeros((4, 2), DType::F32, &CPU).unwrap();
    let err = LoraLayer::from_tensors(&a, &b, &config(2, 4.0)).unwrap_err();
    assert!(err.to_string().contains("lora_A"), "A with r + 1 rows must be an error naming lora_A: {err}");
    let a = Tensor::zeros((2, 8), DType::F32, &CPU).unwrap();
    let b = Tensor::zeros((4, 3), DType::F32, &CPU).unwrap();
    let err = LoraLayer::from_tensors(&a, &b, &config(2, 4.0)).unwrap_err();
    assert!(err.to_string().contains("lora_B"), "B with r + 1 columns must be an error naming lora_B: {err}");
    assert!(LoraLayer::new(8, 4, &config(0, 4.0), &mut rng(0), DType::F32, &CPU).is_err(), "r = 0 must be an error");
}

#[test]
fn dropout_drops_inputs_and_scales_the_kept_ones() {
    book("t01_lora_layer", "Dropout");
    let (inp, out, n, p) = (8, 6, 2000, 0.25);
    let mut cfg = config(2, 4.0);
    cfg.dropout = p;
    let layer = trained(&mut rng(7), inp, out, &cfg, DType::F32);
    // Row i has one non-zero input, feature i % inp. Dropout on the input keeps or drops that
    // one value, so each output row is either all zero or the whole row divided by 1 - p.
    let x: Vec<f32> =
        (0..n * inp).map(|k| if k % inp == (k / inp) % inp { 1.0 + (k % 5) as f32 } else { 0.0 }).collect();
    let x = Tensor::from_vec(x, (n, inp), &CPU).unwrap();
    let full = values(&layer.forward(&x, false).unwrap());
    let dropped = values(&layer.forward(&x, true).unwrap());
    let mut zero_rows = 0;
    for i in 0..n {
        let (f, d) = (&full[i * out..(i + 1) * out], &dropped[i * out..(i + 1) * out]);
        let scale = f.iter().map(|v| v.abs()).fold(0.0, f64::max);
        if d.iter().all(|v| *v == 0.0) {
            zero_rows += 1;
            continue;
        }
        let want: Vec<f64> = f.iter().map(|v| v / (1.0 - p as f64)).collect();
        assert_close!(
            d,
            want,
            1e-5 * scale,
            "row {i}: dropout must drop the adapter's input (scaling what it keeps by 1 / (1 - p)), \
             not parts of its output: got {d:?}, the undropped row is {f:?}"
        );
    }
    let share = zero_rows as f64 / n as f64;
    assert_close!([share], [p as f64], 0.05, "the share of inputs dropped must be p");
}
