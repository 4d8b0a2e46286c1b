//! Grader for task 2.2, the training loop (book/src/t06_train.md). Uses the small random Llama
//! fixture as the model, with your task-1 and task-2.1 code inside it.
//!
//! Run: `cargo test --features exercises --test t06_train`.

#[macro_use]
mod common;

use std::path::Path;

use candle_core::{DType, Tensor, Var, D};
use common::*;
use lora_from_scratch::models::load::{load_model, LoadOptions, LoadedModel};
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t04_save_load::load_lora_weights;
use lora_from_scratch::tasks::t05_data::{collate, tokenize_example, Example, IGNORE_INDEX};
use lora_from_scratch::tasks::t06_train::{
    causal_lm_loss, clip_grad_norm, evaluate_loss, lr_at, train_lora, Decay, Schedule, TrainConfig,
};
use lora_from_scratch::LoraConfig;
use proptest::prelude::*;

const PAD: u32 = 0;

fn lora() -> LoraConfig {
    LoraConfig::new(4, 8.0, &["all-linear", "lm_head"])
}

fn model() -> LoadedModel {
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    inject_lora(m.model.as_mut(), &lora()).unwrap();
    m
}

/// `n` examples with random prompts (1..6 tokens) and responses (1..6 tokens) of ids 3..101.
fn examples(seed: u64, n: usize) -> Vec<Example> {
    use rand::Rng;
    let g = &mut rng(seed);
    (0..n)
        .map(|_| {
            let p: Vec<u32> = (0..g.random_range(1..6)).map(|_| g.random_range(3..101)).collect();
            let r: Vec<u32> = (0..g.random_range(1..6)).map(|_| g.random_range(3..101)).collect();
            tokenize_example(&p, &r, 2, 64).unwrap()
        })
        .collect()
}

fn config(out: &Path, steps: usize, lr: f64) -> TrainConfig {
    TrainConfig {
        schedule: Schedule {
            peak_lr: lr,
            warmup_steps: 2,
            total_steps: steps,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
        },
        batch_size: 2,
        grad_accum: 2,
        max_grad_norm: Some(1.0),
        weight_decay: 0.0,
        eval_every: 2,
        out_dir: out.to_path_buf(),
        seed: 5,
        resume: false,
        stop_after: None,
        progress: false,
    }
}

fn adapter_values(m: &LoadedModel) -> Vec<(String, Vec<u32>)> {
    get_lora_parameters(m.model.as_ref()).into_iter().map(|(n, v)| (n, bits(v.as_tensor()))).collect()
}

proptest! {
    #![proptest_config(proptest_config(64))]

    #[test]
    fn warmup_then_decay_to_the_minimum(warmup in 0usize..10, extra in 2usize..40, peak in 1e-5f64..1e-1,
                                        cosine in any::<bool>()) {
        book("t06_train", "The learning-rate schedule");
        let s = Schedule { peak_lr: peak, warmup_steps: warmup, total_steps: warmup + extra,
                           decay: if cosine { Decay::Cosine } else { Decay::Linear }, min_lr_ratio: 0.1 };
        for step in 0..warmup {
            let want = peak * (step + 1) as f64 / warmup as f64;
            prop_assert_close!([lr_at(&s, step)], [want], 1e-12 * peak, "warmup is linear up to the peak (step {})", step);
        }
        prop_assert_close!([lr_at(&s, warmup)], [peak], 1e-12 * peak, "the first step after warmup is at the peak");
        prop_assert_close!([lr_at(&s, warmup + extra - 1)], [0.1 * peak], 1e-9 * peak, "the last step is at min_lr_ratio * peak");
        for step in warmup..warmup + extra - 1 {
            prop_assert!(lr_at(&s, step + 1) <= lr_at(&s, step) + 1e-15, "after warmup the rate never rises");
        }
        let mid = warmup + (extra - 1) / 2;
        if cosine && (extra - 1) % 2 == 0 {
            prop_assert_close!([lr_at(&s, mid)], [0.55 * peak], 1e-9 * peak, "a cosine is half-way down at half-way");
        }
    }

    #[test]
    fn clipping_scales_the_global_norm(vals in prop::collection::vec(-3.0f64..3.0, 2..12), max_norm in 0.1f64..5.0) {
        book("t06_train", "Clipping the gradient");
        let split = vals.len() / 2;
        let a = Var::new(&vals[..split], &CPU).unwrap();
        let b = Var::new(&vals[split..], &CPU).unwrap();
        // loss = sum(a^2) / 2 + sum(b^2) / 2: the gradients are a and b themselves.
        let loss = ((a.as_tensor().sqr().unwrap().sum_all().unwrap() + b.as_tensor().sqr().unwrap().sum_all().unwrap())
            .unwrap() * 0.5).unwrap();
        let mut grads = loss.backward().unwrap();
        let norm = vals.iter().map(|v| v * v).sum::<f64>().sqrt();
        let got = clip_grad_norm(&mut grads, &[a.clone(), b.clone()], max_norm).unwrap();
        prop_assert_close!([got], [norm], 1e-9, "returns the norm before clipping");
        let after: f64 = [&a, &b].iter().map(|v| values(grads.get(v.as_tensor()).unwrap()).iter().map(|g| g * g).sum::<f64>()).sum::<f64>().sqrt();
        let want = norm.min(max_norm);
        prop_assert_close!([after], [want], 1e-5 * want.max(1.0), "global norm after clipping is min(norm, max_norm)");
    }
}

proptest! {
    #![proptest_config(proptest_config(12))]

    #[test]
    fn the_loss_counts_response_tokens_only(seed in 0u64..1000, n in 1usize..4) {
        book("t06_train", "The loss of a causal LM");
        let m = model();
        let ex = examples(seed, n);
        let batch = collate(&ex, PAD, &CPU).unwrap();
        let (loss, count) = causal_lm_loss(m.model.as_ref(), &batch, false).unwrap();
        // Reference: full logits, log-softmax in f64, every position whose next label is trained.
        let logits = m.model.forward(&batch.input_ids, None, false).unwrap().to_dtype(DType::F64).unwrap();
        let logp: Vec<Vec<Vec<f64>>> = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap().to_vec3().unwrap();
        let labels: Vec<Vec<i64>> = batch.labels.to_vec2().unwrap();
        let (mut nll, mut k) = (0.0, 0);
        for (i, row) in labels.iter().enumerate() {
            for t in 1..row.len() {
                if row[t] != IGNORE_INDEX {
                    nll -= logp[i][t - 1][row[t] as usize];
                    k += 1;
                }
            }
        }
        prop_assert_eq!(count, k, "one target per trained label after the first position");
        let got = f64::from(loss.to_scalar::<f32>().unwrap());
        prop_assert_close!([got], [nll / k as f64], 1e-4, "the loss is the mean NLL of the response tokens");
        // Padding content cannot matter.
        let other_pad = collate(&ex, 55, &CPU).unwrap();
        let (loss2, _) = causal_lm_loss(m.model.as_ref(), &other_pad, false).unwrap();
        prop_assert_eq!(loss.to_scalar::<f32>().unwrap(), loss2.to_scalar::<f32>().unwrap(), "padding tokens must not change the loss");
    }
}

#[test]
fn a_batch_with_nothing_to_learn_is_an_error() {
    book("t06_train", "The loss of a causal LM");
    let m = model();
    let e = Example { input_ids: vec![5, 6, 7], labels: vec![IGNORE_INDEX; 3], truncated: 0 };
    assert!(causal_lm_loss(m.model.as_ref(), &collate(&[e], PAD, &CPU).unwrap(), false).is_err());
}

#[test]
fn training_memorises_a_small_set_and_changes_only_the_adapters() {
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let mut m = model();
    let data = examples(1, 4);
    let base_before = base_weight_bits(m.model.as_ref());
    let adapters_before = adapter_values(&m);
    let first = evaluate_loss(m.model.as_mut(), &data, 4, PAD).unwrap();
    let h = train_lora(m.model.as_mut(), &lora(), &data, &data, PAD, &config(dir.path(), 40, 5e-2), &mut |_, _| {})
        .unwrap();
    let last = evaluate_loss(m.model.as_mut(), &data, 4, PAD).unwrap();
    assert!(last < 0.5 * first, "40 steps on 4 examples should memorise them: loss {first} -> {last}");
    assert_eq!(h.train.len(), 40);
    assert_eq!(base_weight_bits(m.model.as_ref()), base_before, "frozen weights must not change");
    assert_ne!(adapter_values(&m), adapters_before, "the adapters must change");
    assert!(dir.path().join("training_history.json").is_file() && dir.path().join("training_history.png").is_file());
}

#[test]
fn the_best_adapter_is_kept() {
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let mut m = model();
    let (train, val) = (examples(2, 6), examples(3, 3));
    let h = train_lora(m.model.as_mut(), &lora(), &train, &val, PAD, &config(dir.path(), 12, 5e-2), &mut |_, _| {})
        .unwrap();
    assert_eq!(h.val.len(), 7, "validation before the first step, then every 2 steps");
    assert_eq!(h.val[0].step, 0, "the first validation is of the starting point, at step 0");
    let start = evaluate_loss(model().model.as_mut(), &val, 3, PAD).unwrap();
    assert_close!([h.val[0].val_loss], [start], 1e-5, "step 0's validation loss is the base model's");
    let best = h.val.iter().map(|r| r.val_loss).fold(f64::INFINITY, f64::min);
    let (best_step, best_loss) = h.best.unwrap();
    assert_eq!(best_loss, best, "history.best is the lowest validation loss");
    assert!(h.val.iter().any(|r| r.step == best_step && r.val_loss == best));
    let mut fresh = model();
    load_lora_weights(fresh.model.as_mut(), &dir.path().join("best")).unwrap();
    let reloaded = evaluate_loss(fresh.model.as_mut(), &val, 3, PAD).unwrap();
    assert_close!([reloaded], [best], 1e-5, "the saved best adapter gives the best validation loss");
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    book("t06_train", "Resuming a run");
    let (train, val) = (examples(4, 7), examples(5, 2));
    let whole = tempfile::tempdir().unwrap();
    let mut a = model();
    let ha = train_lora(a.model.as_mut(), &lora(), &train, &val, PAD, &config(whole.path(), 8, 1e-2), &mut |_, _| {})
        .unwrap();

    let parts = tempfile::tempdir().unwrap();
    let mut cfg = config(parts.path(), 8, 1e-2);
    cfg.stop_after = Some(4);
    let mut b = model();
    train_lora(b.model.as_mut(), &lora(), &train, &val, PAD, &cfg, &mut |_, _| {}).unwrap();
    // A new process: a fresh model, resumed from the checkpoint.
    let mut c = model();
    cfg.stop_after = None;
    cfg.resume = true;
    let hc = train_lora(c.model.as_mut(), &lora(), &train, &val, PAD, &cfg, &mut |_, _| {}).unwrap();
    assert_eq!(hc.train.len(), 8, "the resumed history continues the old one");
    let (va, vc) = (adapter_values(&a), adapter_values(&c));
    for ((name, x), (_, y)) in va.iter().zip(&vc) {
        let (x, y): (Vec<f32>, Vec<f32>) =
            (x.iter().map(|b| f32::from_bits(*b)).collect(), y.iter().map(|b| f32::from_bits(*b)).collect());
        let diff = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max);
        assert!(diff < 1e-6, "{name} differs by {diff} between the resumed and the uninterrupted run");
    }
    assert_close!([ha.train[7].loss], [hc.train[7].loss], 1e-5, "step 8's loss, resumed against uninterrupted");
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_best_adapter() {
    book("t06_train", "When the loss is NaN");
    let dir = tempfile::tempdir().unwrap();
    let mut m = model();
    let data = examples(6, 4);
    // After the validation at step 2, break one adapter: the next step's loss is NaN.
    let mut poison = |model: &dyn lora_from_scratch::models::CausalLm, step: usize| {
        if step == 2 {
            let (_, v) = get_lora_parameters(model).remove(0);
            v.set(&Tensor::full(f32::NAN, v.dims(), &CPU).unwrap()).unwrap();
        }
    };
    let err = train_lora(m.model.as_mut(), &lora(), &data, &data, PAD, &config(dir.path(), 10, 1e-2), &mut poison)
        .expect_err("training on a NaN loss must stop with an error");
    assert!(err.to_string().to_lowercase().contains("nan"), "the error should say the loss is NaN: {err}");
    // The variant a caller matches on divergence, with the step whose loss was NaN (step 3: the
    // adapter broke after step 2), the loss and the peak learning rate.
    match &err {
        lora_from_scratch::LoraError::Diverged { step, loss, peak_lr, .. } => {
            assert_eq!(*step, 3, "the loss of step 3 is the first NaN one: {err}");
            assert!(loss.is_nan() && *peak_lr == 1e-2, "loss {loss}, peak learning rate {peak_lr}: {err}");
        }
        other => panic!("a NaN loss is LoraError::Diverged, not {other:?}"),
    }
    // The best adapter from step 2 is intact (loading refuses non-finite values).
    let mut fresh = model();
    load_lora_weights(fresh.model.as_mut(), &dir.path().join("best")).unwrap();
}

#[test]
fn a_run_that_diverges_stops_with_an_error_and_keeps_nothing_worse_than_the_start() {
    book("t06_train", "When training diverges");
    let dir = tempfile::tempdir().unwrap();
    let mut m = model();
    let (train, val) = (examples(2, 6), examples(3, 3));
    let start = evaluate_loss(model().model.as_mut(), &val, 3, PAD).unwrap();
    let err = train_lora(m.model.as_mut(), &lora(), &train, &val, PAD, &config(dir.path(), 30, 1e6), &mut |_, _| {})
        .expect_err("a learning rate of 1e6 must not end in success");
    assert!(err.to_string().contains("learning rate"), "the error should name the likely cause: {err}");
    // Whatever was saved as best is no worse than where the run started.
    let best = dir.path().join("best");
    if best.exists() {
        let mut fresh = model();
        load_lora_weights(fresh.model.as_mut(), &best).unwrap();
        let kept = evaluate_loss(fresh.model.as_mut(), &val, 3, PAD).unwrap();
        assert!(
            kept <= start + 1e-5,
            "best/ holds an adapter with validation loss {kept}, worse than the base's {start}"
        );
    }
}

#[test]
fn a_validation_loss_that_jumps_and_stays_up_stops_the_run() {
    book("t06_train", "When training diverges");
    let dir = tempfile::tempdir().unwrap();
    let mut m = model();
    let (train, val) = (examples(2, 6), examples(3, 3));
    // After the validation at step 2, throw every A and B far off: the next validations are far above
    // the best, and at a learning rate of 1e-6 they stay there.
    let mut jump = |model: &dyn lora_from_scratch::models::CausalLm, step: usize| {
        if step == 2 {
            for (_, v) in get_lora_parameters(model) {
                // Large and varied (a constant would shift every logit alike, changing nothing).
                let far: Vec<f32> = (0..v.elem_count()).map(|i| 3.0 * (i as f32 * 1.7).sin()).collect();
                v.set(&Tensor::from_vec(far, v.dims(), &CPU).unwrap()).unwrap();
            }
        }
    };
    let err = train_lora(m.model.as_mut(), &lora(), &train, &val, PAD, &config(dir.path(), 12, 1e-6), &mut jump)
        .expect_err("a validation loss far above the best for two evaluations must stop the run");
    let msg = err.to_string();
    assert!(msg.contains("learning rate") && msg.contains("at step 6"), "stopped at step 6, naming the cause: {msg}");
}

/// One example, `n` times: every batch of it has the same gradient, whatever the batch order.
fn same_example(n: usize) -> Vec<Example> {
    vec![examples(8, 1).remove(0); n]
}

/// Every adapter matrix by name, as f64 values.
type Snapshot = Vec<(String, Vec<f64>)>;

/// A fresh model trained `steps` optimizer steps with `cfg` on `data` (no validation on the way),
/// with its adapter values before and after, and the history.
fn run_steps(
    data: &[Example],
    cfg: &TrainConfig,
    steps: usize,
) -> (Snapshot, Snapshot, lora_from_scratch::train::history::TrainHistory) {
    let mut m = model();
    let read = |m: &LoadedModel| -> Snapshot {
        get_lora_parameters(m.model.as_ref()).into_iter().map(|(n, v)| (n, values(v.as_tensor()))).collect()
    };
    let before = read(&m);
    let mut cfg = cfg.clone();
    cfg.stop_after = Some(steps);
    let h = train_lora(m.model.as_mut(), &lora(), data, data, PAD, &cfg, &mut |_, _| {}).unwrap();
    (before, read(&m), h)
}

/// The largest change of any B entry between two snapshots of the adapters.
fn largest_b_move(before: &Snapshot, after: &Snapshot) -> f64 {
    before
        .iter()
        .zip(after)
        .filter(|((n, _), _)| n.contains("lora_B"))
        .map(|((_, a), (_, b))| max_abs_diff(a, b))
        .fold(0.0, f64::max)
}

/// A plain step-by-step config for the optimizer tests: no accumulation, no clipping, no decay.
fn plain(out: &Path) -> TrainConfig {
    let mut cfg = config(out, 10, 1e-2);
    cfg.schedule.warmup_steps = 4;
    cfg.batch_size = 2;
    cfg.grad_accum = 1;
    cfg.max_grad_norm = None;
    cfg.eval_every = 100;
    cfg
}

#[test]
fn the_optimizer_steps_at_the_scheduled_rate() {
    book("t06_train", "The learning-rate schedule");
    let dir = tempfile::tempdir().unwrap();
    let cfg = plain(dir.path());
    let data = same_example(4);
    // Adam's step is lr * m / (sqrt(v) + eps): about the learning rate for the largest entries
    // when the gradient keeps its sign, whatever its size. B starts at 0.
    let (start, one, h1) = run_steps(&data, &cfg, 1);
    let (_, two, h2) = run_steps(&data, &cfg, 2);
    let (lr0, lr1) = (lr_at(&cfg.schedule, 0), lr_at(&cfg.schedule, 1));
    assert_eq!(h1.train[0].lr, lr0);
    assert_eq!(h2.train[1].lr, lr1);
    let first = largest_b_move(&start, &one);
    let second = largest_b_move(&one, &two);
    assert_close!([first], [lr0], 0.05 * lr0, "step 1 moves B by up to lr (the schedule's lr_at(0))");
    assert_close!([second], [lr1], 0.1 * lr1, "step 2 moves B by up to lr_at(1): is the optimizer given lr_at(step)?");
}

#[test]
fn weight_decay_shrinks_the_weights_as_adamw_does() {
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = plain(dir.path());
    cfg.weight_decay = 0.5;
    let (before, after, _) = run_steps(&same_example(4), &cfg, 1);
    // B = 0 at the start, so A's gradient is 0 and its first step is AdamW's decay alone:
    // A <- A (1 - lr wd).
    let keep = 1.0 - lr_at(&cfg.schedule, 0) * cfg.weight_decay;
    for ((name, a0), (_, a1)) in before.iter().zip(&after).filter(|((n, _), _)| n.contains("lora_A")) {
        let want: Vec<f64> = a0.iter().map(|v| v * keep).collect();
        let scale = a0.iter().map(|v| v.abs()).fold(0.0, f64::max);
        assert_close!(a1, want, 1e-6 * scale, "{name}: A must shrink by 1 - lr * weight_decay = {keep}");
    }
}

#[test]
fn accumulating_micro_batches_equals_one_larger_batch() {
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let data = same_example(8);
    let mut big = plain(dir.path());
    big.batch_size = 4;
    let mut micro = big.clone();
    (micro.batch_size, micro.grad_accum) = (1, 4);
    let (_, after_big, h_big) = run_steps(&data, &big, 1);
    let (_, after_micro, h_micro) = run_steps(&data, &micro, 1);
    let (n_big, n_micro) = (h_big.train[0].grad_norm, h_micro.train[0].grad_norm);
    assert_close!(
        [n_micro],
        [n_big],
        1e-4 * n_big,
        "the gradient norm over 4 micro-batches of 1 must be the one over a batch of 4: average, do not sum"
    );
    assert_close!([h_micro.train[0].loss], [h_big.train[0].loss], 1e-5, "the step's loss is the micro-batches' mean");
    for ((name, a), (_, b)) in after_big.iter().zip(&after_micro) {
        assert_close!(a, b, 1e-6, "{name} differs after the same step taken two ways");
    }
}

#[test]
fn clipping_scales_the_gradient_before_the_step() {
    book("t06_train", "Clipping the gradient");
    let dir = tempfile::tempdir().unwrap();
    let data = same_example(4);
    let mut cfg = plain(dir.path());
    cfg.max_grad_norm = Some(1e-12);
    let (start, clipped, h) = run_steps(&data, &cfg, 1);
    let lr0 = lr_at(&cfg.schedule, 0);
    assert!(h.train[0].grad_norm > 1e-9, "the history records the norm before clipping");
    // Clipped to a norm of 1e-12, every entry is far below Adam's eps (1e-8): the step all but
    // vanishes. Unclipped, the same step moves B by about lr.
    let moved = largest_b_move(&start, &clipped);
    assert!(moved < 1e-3 * lr0, "with max_grad_norm = 1e-12 B moved by {moved}: the clipped gradient was not used");
    cfg.max_grad_norm = None;
    let (_, free, _) = run_steps(&data, &cfg, 1);
    assert!(largest_b_move(&start, &free) > 0.5 * lr0);
}
