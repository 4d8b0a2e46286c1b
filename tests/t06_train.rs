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
    accumulate_gradients, causal_lm_loss, clip_grad_norm, evaluate_loss, lr_at, optimizer_step, start_run, train_lora,
    validate_and_keep_best, Decay, LoraAdapters, Schedule, TrainConfig, TrainState,
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

// The loop's steps, each graded on its own: `start_run`, `accumulate_gradients`,
// `optimizer_step`, `validate_and_keep_best`. The tests above grade them together through `train`.

/// The tiny model with every adapter moved off its start (seeded), so that every A and B has a
/// gradient and the loss depends on all of them.
fn moved_model(seed: u64) -> LoadedModel {
    let m = model();
    for (i, (_, v)) in get_lora_parameters(m.model.as_ref()).into_iter().enumerate() {
        let t = (randn(&mut rng(seed + i as u64), v.dims(), DType::F32) * 0.05).unwrap();
        v.set(&t).unwrap();
    }
    m
}

/// The ids of the tensors of `vars`, for "the same `Var`s", not merely equal values.
fn ids(vars: &[Var]) -> Vec<candle_core::TensorId> {
    vars.iter().map(|v| v.as_tensor().id()).collect()
}

/// The same ids, whatever their order (and no id twice).
fn same_set(a: &[candle_core::TensorId], b: &[candle_core::TensorId]) -> bool {
    use std::collections::HashSet;
    let (x, y): (HashSet<_>, HashSet<_>) = (a.iter().collect(), b.iter().collect());
    a.len() == b.len() && x.len() == a.len() && x == y
}

fn adapter_vars(m: &LoadedModel) -> Vec<Var> {
    get_lora_parameters(m.model.as_ref()).into_iter().map(|(_, v)| v).collect()
}

#[test]
fn a_fresh_run_starts_from_its_validated_starting_point() {
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let mut m = moved_model(40);
    let val = examples(3, 3);
    let cfg = config(dir.path(), 6, 1e-2);
    let start = evaluate_loss(m.model.as_mut(), &val, cfg.batch_size, PAD).unwrap();
    let state = start_run(m.model.as_mut(), &LoraAdapters(&lora()), &val, PAD, &cfg).unwrap();
    assert_eq!(state.step, 0, "a fresh run has done no step");
    assert!(state.history.train.is_empty(), "a fresh run has no step records");
    assert_eq!(state.history.val.len(), 1, "one validation, of the starting point: {:?}", state.history.val);
    assert_eq!(state.history.val[0].step, 0, "the starting point is validated at step 0");
    assert_close!(
        [state.history.val[0].val_loss],
        [start],
        1e-5,
        "step 0's validation loss is the model's as it starts"
    );
    assert_eq!(state.history.best, Some((0, state.history.val[0].val_loss)), "step 0 is the first best");
    // The optimizer trains the trainee's groups: every adapter, nothing else, the model's own Vars.
    let (want, got) = (ids(&adapter_vars(&m)), ids(&state.vars));
    let in_opt: Vec<_> = state.opt.vars().iter().map(|(_, v)| v.as_tensor().id()).collect();
    assert_eq!(got, in_opt, "`vars` are the optimizer's Vars, in its order");
    assert!(same_set(&got, &want), "the optimizer holds exactly the model's adapter Vars");
    assert_eq!(state.opt.steps(), 0);
    // best/ holds the starting point.
    let mut fresh = model();
    load_lora_weights(fresh.model.as_mut(), &dir.path().join("best")).expect("step 0 is saved as best");
    assert_eq!(adapter_values(&fresh), adapter_values(&m), "best/ holds the adapters the run started with");
    // cfg.resume without a checkpoint is a fresh start too.
    let other = tempfile::tempdir().unwrap();
    let mut cfg = config(other.path(), 6, 1e-2);
    cfg.resume = true;
    let state = start_run(moved_model(40).model.as_mut(), &LoraAdapters(&lora()), &val, PAD, &cfg).unwrap();
    assert_eq!((state.step, state.history.val.len()), (0, 1), "no checkpoint: a fresh start");
}

#[test]
fn a_resumed_run_starts_from_its_checkpoint() {
    use lora_from_scratch::tasks::t04_save_load::save_lora_weights;
    use lora_from_scratch::train::checkpoint::save_checkpoint;
    use lora_from_scratch::train::history::{EvalRecord, StepRecord, TrainHistory};
    use lora_from_scratch::train::optim::{AdamW, AdamWParams};
    book("t06_train", "Resuming a run");
    let dir = tempfile::tempdir().unwrap();
    let (train, val) = (examples(4, 6), examples(5, 2));
    // A checkpoint written without the loop: the adapters of a moved model after two AdamW
    // steps, their moments, step 3 and a history of three steps.
    let written = moved_model(50);
    let mut opt = AdamW::new(get_lora_parameters(written.model.as_ref()), AdamWParams::default()).unwrap();
    for _ in 0..2 {
        let batch = collate(&train[..2], PAD, &CPU).unwrap();
        let (loss, _) = causal_lm_loss(written.model.as_ref(), &batch, true).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    // A run that may be diverging: at step 2 the validation loss is far above the best and the
    // training loss rose with it, so a guard rebuilt from this history is suspect.
    let record = |step, loss| StepRecord { step, loss, lr: 1e-2, grad_norm: 1.0, tokens: 9, tokens_per_s: 1.0 };
    let history = TrainHistory {
        train: vec![record(1, 3.0), record(2, 20.0), record(3, 20.0)],
        val: vec![EvalRecord { step: 0, val_loss: 2.5 }, EvalRecord { step: 2, val_loss: 16.0 }],
        best: Some((0, 2.5)),
    };
    save_checkpoint(&opt, 3, &history, dir.path(), |d| save_lora_weights(written.model.as_ref(), &lora(), d)).unwrap();

    let mut cfg = config(dir.path(), 6, 1e-2);
    cfg.resume = true;
    let mut resumed = model();
    let state = start_run(resumed.model.as_mut(), &LoraAdapters(&lora()), &val, PAD, &cfg).unwrap();
    assert_eq!(state.step, 3, "a resumed run continues after the checkpoint's step");
    assert_eq!(state.history, history, "the history is the checkpoint's (no new step-0 validation)");
    assert_eq!(adapter_values(&resumed), adapter_values(&written), "the adapters are the checkpoint's");
    assert_eq!(state.opt.steps(), 2, "the optimizer's state (moments and step count) is the checkpoint's");
    assert!(
        state.guard.suspect(),
        "the guard is rebuilt from the checkpoint's history (DivergenceGuard::from_history), which saw a far validation"
    );
    assert!(
        same_set(&ids(&state.vars), &ids(&adapter_vars(&resumed))),
        "the optimizer must hold the Vars loading put in place: build it after loading"
    );
    // Without cfg.resume the same folder starts afresh.
    cfg.resume = false;
    let state = start_run(model().model.as_mut(), &LoraAdapters(&lora()), &val, PAD, &cfg).unwrap();
    assert_eq!(state.step, 0, "cfg.resume is off: the checkpoint is not used");
}

#[test]
fn a_step_gradient_is_the_mean_over_its_micro_batches_in_the_seeded_order() {
    use lora_from_scratch::train::data::epoch_batches;
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let m = moved_model(60);
    let data = examples(9, 5);
    let mut cfg = config(dir.path(), 10, 1e-2);
    (cfg.batch_size, cfg.grad_accum) = (2, 2);
    let vars = adapter_vars(&m);
    let trainee = LoraAdapters(&lora());
    // 5 examples in batches of 2: 3 batches an epoch. Step 1's micro-batches are 2 and 3: the
    // last batch of epoch 0 and the first of epoch 1.
    let (grads, loss, tokens) = accumulate_gradients(m.model.as_ref(), &trainee, &vars, &data, PAD, &cfg, 1).unwrap();
    let mut want: Vec<Vec<f64>> = vec![Vec::new(); vars.len()];
    let (mut want_loss, mut want_tokens) = (0.0, 0);
    for micro in [2, 3] {
        let idx = &epoch_batches(data.len(), 2, cfg.seed, micro / 3)[micro % 3];
        let batch: Vec<Example> = idx.iter().map(|&i| data[i].clone()).collect();
        let (l, n) = causal_lm_loss(m.model.as_ref(), &collate(&batch, PAD, &CPU).unwrap(), true).unwrap();
        want_loss += f64::from(l.to_scalar::<f32>().unwrap()) / 2.0;
        want_tokens += n;
        let g = l.backward().unwrap();
        for (w, v) in want.iter_mut().zip(&vars) {
            let gv = values(g.get(v.as_tensor()).unwrap());
            if w.is_empty() {
                *w = vec![0.0; gv.len()];
            }
            w.iter_mut().zip(gv).for_each(|(w, g)| *w += g / 2.0);
        }
    }
    assert_close!([loss], [want_loss], 1e-5, "the step's loss is the mean of its micro-batches' losses");
    assert_eq!(tokens, want_tokens, "the step's tokens are its micro-batches' supervised tokens");
    for ((name, _), (v, w)) in get_lora_parameters(m.model.as_ref()).iter().zip(vars.iter().zip(&want)) {
        let got = values(grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient")));
        let scale = w.iter().fold(0f64, |a, b| a.max(b.abs()));
        assert_close!(
            got,
            w,
            1e-4 * scale + 1e-7,
            "{name}: the gradient must be the mean over micro-batches 2 and 3 of the seeded order (across the epoch boundary)"
        );
    }
}

#[test]
fn a_non_finite_loss_is_a_divergence_at_its_step() {
    book("t06_train", "When the loss is NaN");
    let dir = tempfile::tempdir().unwrap();
    let m = moved_model(70);
    let (_, v) = get_lora_parameters(m.model.as_ref()).remove(0);
    v.set(&Tensor::full(f32::NAN, v.dims(), &CPU).unwrap()).unwrap();
    let cfg = config(dir.path(), 10, 3e-3);
    let err = accumulate_gradients(
        m.model.as_ref(),
        &LoraAdapters(&lora()),
        &adapter_vars(&m),
        &examples(2, 4),
        PAD,
        &cfg,
        4,
    )
    .expect_err("a NaN loss must stop the step");
    match &err {
        lora_from_scratch::LoraError::Diverged { step, loss, peak_lr, .. } => {
            assert_eq!(*step, 5, "step 4 (0-based) is the run's step 5: {err}");
            assert!(loss.is_nan() && *peak_lr == 3e-3, "loss {loss}, peak learning rate {peak_lr}: {err}");
        }
        other => panic!("a NaN loss is LoraError::Diverged, not {other:?}"),
    }
}

/// A fresh state over a moved model, and the gradient of its step 0 (batches of 2, no accumulation).
fn state_and_gradient(
    dir: &Path,
    seed: u64,
) -> (LoadedModel, TrainState, candle_core::backprop::GradStore, TrainConfig) {
    let mut m = moved_model(seed);
    let data = examples(11, 4);
    let mut cfg = config(dir, 10, 1e-2);
    cfg.grad_accum = 1;
    let trainee = LoraAdapters(&lora());
    let state = start_run(m.model.as_mut(), &trainee, &data, PAD, &cfg).unwrap();
    let (grads, _, _) = accumulate_gradients(m.model.as_ref(), &trainee, &state.vars, &data, PAD, &cfg, 0).unwrap();
    (m, state, grads, cfg)
}

/// The largest change of any adapter entry between two `adapter_values` snapshots.
fn largest_move(before: &[(String, Vec<u32>)], after: &[(String, Vec<u32>)]) -> f64 {
    before
        .iter()
        .zip(after)
        .flat_map(|((_, a), (_, b))| {
            a.iter().zip(b).map(|(x, y)| (f32::from_bits(*x) - f32::from_bits(*y)).abs() as f64)
        })
        .fold(0.0, f64::max)
}

fn global_norm(grads: &candle_core::backprop::GradStore, vars: &[Var]) -> f64 {
    vars.iter()
        .filter_map(|v| grads.get(v.as_tensor()))
        .map(|g| values(g).iter().map(|x| x * x).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

#[test]
fn an_optimizer_step_runs_at_its_rate_on_the_clipped_gradient_and_is_recorded() {
    book("t06_train", "Clipping the gradient");
    let dir = tempfile::tempdir().unwrap();
    let (m, mut state, grads, mut cfg) = state_and_gradient(dir.path(), 80);
    let norm = global_norm(&grads, &state.vars);
    // Pretend three steps are done: this is step 3 (0-based), at lr_at(3).
    state.step = 3;
    cfg.max_grad_norm = None;
    let before = adapter_values(&m);
    let started = std::time::Instant::now();
    let record = optimizer_step(&mut state, grads, 2.5, 17, &cfg, started).unwrap();
    let lr = lr_at(&cfg.schedule, 3);
    assert_eq!(record.step, 4, "the record counts steps from 1");
    assert_eq!(record.lr, lr, "step 3 runs at lr_at(3)");
    assert_close!([record.grad_norm], [norm], 1e-5 * norm, "the record holds the global norm of the gradient");
    assert_eq!((record.loss, record.tokens), (2.5, 17), "the record holds the step's loss and tokens");
    assert!(record.tokens_per_s > 0.0 && record.tokens_per_s.is_finite());
    assert_eq!(state.history.train.last(), Some(&record), "the record joins the history");
    assert_eq!(state.step, 4, "state.step counts the step");
    assert_eq!(state.opt.steps(), 1, "the optimizer stepped once");
    // Adam's first step moves each entry by about the rate, whatever the gradient's size.
    let after = adapter_values(&m);
    let moved = largest_move(&before, &after);
    assert_close!([moved], [lr], 0.05 * lr, "the largest move is the step's rate lr_at(3)");

    // Clipped to a norm of 1e-12, the gradient is far below Adam's eps: the step all but vanishes.
    let dir = tempfile::tempdir().unwrap();
    let (m, mut state, grads, mut cfg) = state_and_gradient(dir.path(), 80);
    cfg.max_grad_norm = Some(1e-12);
    let before = adapter_values(&m);
    let record = optimizer_step(&mut state, grads, 2.5, 17, &cfg, std::time::Instant::now()).unwrap();
    assert_close!([record.grad_norm], [norm], 1e-5 * norm, "the record holds the norm before clipping");
    let moved = largest_move(&before, &adapter_values(&m));
    assert!(moved < 1e-3 * lr_at(&cfg.schedule, 0), "with max_grad_norm = 1e-12 an entry moved by {moved}: clip first");
}

#[test]
fn a_step_with_a_broken_gradient_stops_the_run() {
    book("t06_train", "When training diverges");
    let dir = tempfile::tempdir().unwrap();
    let (_m, mut state, mut grads, cfg) = state_and_gradient(dir.path(), 90);
    let v = state.vars[0].clone();
    grads.insert(v.as_tensor(), Tensor::full(f32::INFINITY, v.dims(), &CPU).unwrap());
    let err = optimizer_step(&mut state, grads, 2.0, 5, &cfg, std::time::Instant::now())
        .expect_err("an infinite gradient norm must stop the run");
    assert!(
        matches!(err, lora_from_scratch::LoraError::Diverged { step: 1, .. }),
        "the guard's after_step stops step 1: {err:?}"
    );
}

#[test]
fn validation_keeps_only_a_better_adapter_and_checkpoints_unless_suspect() {
    use lora_from_scratch::train::checkpoint::read_checkpoint_state;
    use lora_from_scratch::train::guard::DivergenceGuard;
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let mut m = moved_model(100);
    let val = examples(12, 3);
    let cfg = config(dir.path(), 10, 1e-2);
    let trainee = LoraAdapters(&lora());
    let mut state = start_run(m.model.as_mut(), &trainee, &val, PAD, &cfg).unwrap();
    let best_dir = dir.path().join("best");
    let loss_now = evaluate_loss(m.model.as_mut(), &val, cfg.batch_size, PAD).unwrap();

    // Better than the best: recorded, the new best, saved, checkpointed.
    state.step = 2;
    state.history.best = Some((0, f64::INFINITY));
    std::fs::remove_dir_all(&best_dir).unwrap();
    let v = validate_and_keep_best(m.model.as_mut(), &trainee, &mut state, &val, PAD, &cfg).unwrap();
    assert_close!([v], [loss_now], 1e-5, "the validation loss is evaluate_loss's");
    assert_eq!(state.history.val.last().map(|r| (r.step, r.val_loss)), Some((2, v)), "recorded at step 2");
    assert_eq!(state.history.best, Some((2, v)), "a lower loss is the new best");
    let mut fresh = model();
    load_lora_weights(fresh.model.as_mut(), &best_dir).expect("a new best is saved to best/");
    assert_eq!(adapter_values(&fresh), adapter_values(&m));
    let (step, history) = read_checkpoint_state(dir.path()).unwrap().expect("a checkpoint is written");
    assert_eq!((step, &history), (2, &state.history), "the checkpoint holds the step and the history");

    // Not better: the same weights give the same loss, which is not *below* the best: recorded,
    // but neither the best nor best/ changes; the checkpoint moves on.
    state.step = 4;
    std::fs::remove_dir_all(&best_dir).unwrap();
    let again = validate_and_keep_best(m.model.as_mut(), &trainee, &mut state, &val, PAD, &cfg).unwrap();
    assert_eq!(again, v, "the same weights, the same validation loss");
    assert_eq!(state.history.val.last().map(|r| (r.step, r.val_loss)), Some((4, v)));
    assert_eq!(state.history.best, Some((2, v)), "a loss equal to the best is not a new best");
    assert!(!best_dir.exists(), "best/ is written only for a new best (strictly lower)");
    assert_eq!(read_checkpoint_state(dir.path()).unwrap().map(|(s, _)| s), Some(4));

    // Suspect (far above the best, with the training loss up as well): no checkpoint.
    state.step = 6;
    state.history.best = Some((4, 0.01));
    state.guard = DivergenceGuard::new(cfg.schedule.peak_lr);
    state.guard.after_step(5, 0.5, 1.0, state.history.best).unwrap();
    state.guard.after_step(6, 20.0, 1.0, state.history.best).unwrap();
    validate_and_keep_best(m.model.as_mut(), &trainee, &mut state, &val, PAD, &cfg)
        .expect("one far validation may be a spike: it does not stop the run");
    assert!(state.guard.suspect(), "the guard's after_eval saw the far validation");
    assert_eq!(read_checkpoint_state(dir.path()).unwrap().map(|(s, _)| s), Some(4), "no checkpoint while suspect");

    // A NaN validation stops the run at once, and writes no checkpoint.
    state.step = 8;
    state.guard = DivergenceGuard::new(cfg.schedule.peak_lr);
    let (_, v) = get_lora_parameters(m.model.as_ref()).remove(0);
    v.set(&Tensor::full(f32::NAN, v.dims(), &CPU).unwrap()).unwrap();
    let err = validate_and_keep_best(m.model.as_mut(), &trainee, &mut state, &val, PAD, &cfg)
        .expect_err("a NaN validation loss must stop the run");
    assert!(matches!(err, lora_from_scratch::LoraError::Diverged { step: 8, .. }), "{err:?}");
    assert_eq!(
        read_checkpoint_state(dir.path()).unwrap().map(|(s, _)| s),
        Some(4),
        "no checkpoint after a failed check"
    );
}

#[test]
fn empty_train_or_validation_sets_are_errors() {
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let data = examples(13, 3);
    for (train, val) in [(&data[..0], &data[..]), (&data[..], &data[..0])] {
        let err =
            train_lora(model().model.as_mut(), &lora(), train, val, PAD, &config(dir.path(), 4, 1e-2), &mut |_, _| {})
                .expect_err("an empty set must be an error, not a panic or a loss of 0");
        assert!(matches!(err, lora_from_scratch::LoraError::InvalidInput { .. }), "{err:?}");
    }
}

#[test]
fn validation_runs_every_eval_every_steps_and_after_the_last() {
    book("t06_train", "The training loop");
    let dir = tempfile::tempdir().unwrap();
    let data = examples(14, 4);
    let mut seen = Vec::new();
    // 5 steps, a validation every 2: at 0 (the start), 2, 4 and 5 (the last).
    let h =
        train_lora(model().model.as_mut(), &lora(), &data, &data, PAD, &config(dir.path(), 5, 1e-2), &mut |_, s| {
            seen.push(s)
        })
        .unwrap();
    let steps: Vec<usize> = h.val.iter().map(|r| r.step).collect();
    assert_eq!(steps, [0, 2, 4, 5], "validations at step 0, every eval_every steps, and after the last");
    assert_eq!(seen, [2, 4, 5], "on_eval runs after each validation of the run, with the steps done");
}
