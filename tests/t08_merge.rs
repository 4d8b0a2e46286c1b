//! Grader for task 3, merging (book/src/t08_merge.md).
//!
//! Run: `cargo test --features exercises --test t08_merge`.

#[macro_use]
mod common;

use candle_core::{DType, Tensor};
use common::*;
use lora_from_scratch::models::load::{load_model, LoadOptions, LoadedModel};
use lora_from_scratch::tasks::t01_lora_layer::LoraLayer;
use lora_from_scratch::tasks::t03_inject::{count_parameters, get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t08_merge::{lora_delta, merge_lora_weights, unmerge_lora_weights, verify_merge};
use lora_from_scratch::{LinearSlot, LoraConfig};
use proptest::prelude::*;

/// A fixture model with adapters whose B is random (a fresh B = 0 would merge to nothing).
fn adapted(fixture: &str, r: usize, targets: &[&str], seed: u64, split_qkv: bool) -> LoadedModel {
    let opts = LoadOptions { split_qkv, ..Default::default() };
    let mut m = load_model(&format!("tests/fixtures/{fixture}"), &opts).unwrap();
    inject_lora(m.model.as_mut(), &LoraConfig { seed, ..LoraConfig::new(r, 2.0 * r as f64, targets) }).unwrap();
    for (i, (_, v)) in get_lora_parameters(m.model.as_ref()).into_iter().enumerate() {
        let t = (randn(&mut rng(seed + i as u64), v.dims(), DType::F32) * 0.05).unwrap();
        v.set(&t).unwrap();
    }
    m
}

fn ids() -> Tensor {
    Tensor::new(&[[3u32, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]], &CPU).unwrap()
}

fn logits(m: &LoadedModel) -> Vec<f64> {
    values(&m.model.forward(&ids(), None, false).unwrap())
}

#[test]
fn the_delta_is_scaling_b_a() {
    book("t08_merge", "The update an adapter stands for");
    let g = &mut rng(1);
    let (a, b) = (randn(g, &[3, 5], DType::F32), randn(g, &[4, 3], DType::F32));
    let lora = LoraLayer::from_tensors(&a, &b, &LoraConfig::new(3, 6.0, &["q_proj"])).unwrap();
    let d = lora_delta(&lora).unwrap();
    assert_eq!(d.dims(), &[4, 5], "B A has W's shape [out, in]");
    let want: Vec<f64> = values(&b.matmul(&a).unwrap()).iter().map(|x| x * 2.0).collect();
    assert_close!(values(&d), want, 1e-5, "lora_delta must be scaling * B A");
}

proptest! {
    #![proptest_config(proptest_config(10))]

    #[test]
    fn merged_equals_adapted(r in 1usize..9, seed in 0u64..1000, which in 0usize..4) {
        book("t08_merge", "Merging");
        let (fixture, targets, split): (&str, &[&str], bool) = match which {
            0 => ("tiny-llama", &["q_proj", "v_proj"], false),
            1 => ("tiny-llama", &["all-linear", "lm_head"], false),
            2 => ("tiny-gpt2", &["c_attn", "c_fc"], false),
            _ => ("tiny-gpt2", &["c_attn.q", "c_attn.v", "attn.c_proj"], true),
        };
        let mut m = adapted(fixture, r, targets, seed, split);
        let before = logits(&m);
        let merged = merge_lora_weights(m.model.as_mut()).unwrap();
        prop_assert!(!merged.modules.is_empty());
        let after = logits(&m);
        prop_assert_close!(after, before, 1e-5, "merged logits must equal the adapted model's");
        prop_assert!(m.model.linears().iter().all(|(_, s)| s.lora().is_none()), "no adapter is left after merging");
        prop_assert_eq!(count_parameters(m.model.as_ref()).trainable, 0, "a merged model trains nothing");
    }

    #[test]
    fn unmerge_restores_the_base(r in 1usize..6, seed in 0u64..1000) {
        book("t08_merge", "Unmerging");
        let mut m = adapted("tiny-llama", r, &["q_proj", "down_proj"], seed, false);
        let base: Vec<(String, Vec<f64>)> = m.model.linears().into_iter().map(|(n, s)| (n, values(&s.base_weight().unwrap()))).collect();
        let adapted_logits = logits(&m);
        let merged = merge_lora_weights(m.model.as_mut()).unwrap();
        unmerge_lora_weights(m.model.as_mut(), merged).unwrap();
        for ((name, w0), (_, s)) in base.iter().zip(m.model.linears()) {
            prop_assert_close!(values(&s.base_weight().unwrap()), w0, 1e-6, "{} is not restored", name);
        }
        prop_assert_close!(logits(&m), adapted_logits, 1e-5, "the adapters are back in place");
        prop_assert_eq!(m.model.linears().iter().filter(|(_, s)| s.lora().is_some()).count(), 4);
    }
}

proptest! {
    #![proptest_config(proptest_config(24))]

    /// Random layer shapes and ranks on the graders' small model: merged equals adapted to 1e-4
    /// of the largest logit. (The two orders of f32 sums differ by up to about 1.3e-5 of it on
    /// unlucky shapes; a wrong merge is off by far more.)
    #[test]
    fn merged_equals_adapted_for_any_shape(hidden in 1usize..24, inter in 1usize..24, vocab in 2usize..40,
                                           r in 1usize..9, seed in 0u64..1000) {
        book("t08_merge", "Merging");
        use lora_from_scratch::models::tiny::{TinyConfig, TinyLm};
        let cfg = TinyConfig { vocab_size: vocab, hidden_size: hidden, intermediate_size: inter, num_layers: 2, attention_bias: true };
        let mut m = TinyLm::new(cfg, seed, &CPU).unwrap();
        inject_lora(&mut m, &LoraConfig { seed, ..LoraConfig::new(r, 3.0, &["all-linear", "lm_head"]) }).unwrap();
        for (i, (_, v)) in get_lora_parameters(&m).into_iter().enumerate() {
            v.set(&(randn(&mut rng(seed + i as u64), v.dims(), DType::F32) * 0.3).unwrap()).unwrap();
        }
        let ids = token_ids(&mut rng(seed), 2, 5, vocab);
        let before = values(&m.forward(&ids, false).unwrap());
        merge_lora_weights(&mut m).unwrap();
        let after = values(&m.forward(&ids, false).unwrap());
        let scale = before.iter().fold(1.0f64, |a, x| a.max(x.abs()));
        prop_assert_close!(after, before, 1e-4 * scale, "the merged layer's output must equal the adapted one's");
    }
}

#[test]
fn merging_twice_is_an_error_not_a_double_update() {
    book("t08_merge", "Merging");
    let mut m = adapted("tiny-llama", 4, &["q_proj"], 3, false);
    merge_lora_weights(m.model.as_mut()).unwrap();
    let once = logits(&m);
    assert!(merge_lora_weights(m.model.as_mut()).is_err(), "a second merge must be refused");
    assert_eq!(logits(&m), once, "and must not change the model");
}

#[test]
fn a_nan_update_is_refused_and_changes_nothing() {
    book("t08_merge", "Merging");
    let mut m = adapted("tiny-llama", 2, &["q_proj", "v_proj"], 4, false);
    let (name, v) = get_lora_parameters(m.model.as_ref()).pop().unwrap();
    v.set(&Tensor::full(f32::NAN, v.dims(), &CPU).unwrap()).unwrap();
    let err = merge_lora_weights(m.model.as_mut()).expect_err("a NaN weight must not be merged");
    assert!(err.to_string().contains(name.trim_end_matches(".lora_B.weight")), "the error names the module: {err}");
    let adapted_slots = m.model.linears().iter().filter(|(_, s)| matches!(s, LinearSlot::Lora(_))).count();
    assert_eq!(adapted_slots, 4, "nothing was merged");
}

#[test]
fn verify_merge_reports_and_passes_a_good_merge() {
    book("t08_merge", "Verifying a merge");
    let mut m = adapted("tiny-gpt2", 4, &["c_attn", "c_fc", "c_proj"], 5, false);
    let (report, merged) = verify_merge(m.model.as_mut(), &ids(), 1e-4).unwrap();
    assert!(report.passed && report.max_abs_diff < 1e-4, "{report:?}");
    assert!(report.max_rel_diff.is_finite() && report.max_rel_diff >= 0.0);
    assert_eq!(merged.modules.len(), 8, "c_attn, c_fc and both c_proj in 2 blocks");
    assert!(m.model.linears().iter().all(|(_, s)| s.lora().is_none()));
    // An impossible tolerance fails, and the merge is undone.
    let mut m = adapted("tiny-gpt2", 4, &["c_attn"], 6, false);
    let (report, _) = verify_merge(m.model.as_mut(), &ids(), -1.0).unwrap();
    assert!(!report.passed);
    assert_eq!(m.model.linears().iter().filter(|(_, s)| s.lora().is_some()).count(), 2, "a failed merge is undone");
}

#[test]
fn verify_merge_compares_the_merged_model_with_the_adapted_one() {
    book("t08_merge", "Verifying a merge");
    // The same adapted model twice: one is merged by hand and measured here, the other by
    // verify_merge, whose report must say the same.
    let mut by_hand = adapted("tiny-llama", 4, &["q_proj", "v_proj", "down_proj"], 8, false);
    let adapted_logits = logits(&by_hand);
    merge_lora_weights(by_hand.model.as_mut()).unwrap();
    let merged_logits = logits(&by_hand);
    let max_abs = adapted_logits.iter().zip(&merged_logits).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let scale = adapted_logits.iter().fold(0.0f64, |m, a| m.max(a.abs()));
    assert!(max_abs > 0.0, "the fixture's merge must move some logit by a rounding, for this check to mean something");

    let mut m = adapted("tiny-llama", 4, &["q_proj", "v_proj", "down_proj"], 8, false);
    let (report, _) = verify_merge(m.model.as_mut(), &ids(), 1.0).unwrap();
    assert_close!([report.max_abs_diff], [max_abs], 1e-12 * scale,
        "max_abs_diff must be max |merged - adapted| over the logits, the adapted logits taken before merging: {report:?}");
    assert_close!(
        [report.max_rel_diff],
        [max_abs / scale],
        1e-12,
        "max_rel_diff must be max_abs_diff / max |adapted logit|: {report:?}"
    );
    assert_eq!(report.tolerance, 1.0, "the report carries the tolerance it was checked against");

    // A tolerance just below the difference fails the check, and the merge is undone; just
    // above, it passes.
    let mut m = adapted("tiny-llama", 4, &["q_proj", "v_proj", "down_proj"], 8, false);
    let (report, _) = verify_merge(m.model.as_mut(), &ids(), max_abs * 0.5).unwrap();
    assert!(!report.passed, "a difference above the tolerance must fail the check: {report:?}");
    assert_close!(
        logits(&m),
        adapted_logits.clone(),
        1e-5 * scale,
        "a failed check must give back the adapted model (unmerged)"
    );
    assert!(m.model.linears().iter().any(|(_, s)| s.lora().is_some()), "a failed check must put the adapters back");
    let mut m = adapted("tiny-llama", 4, &["q_proj", "v_proj", "down_proj"], 8, false);
    let (report, _) = verify_merge(m.model.as_mut(), &ids(), max_abs * 2.0).unwrap();
    assert!(report.passed, "a difference within the tolerance must pass: {report:?}");
    assert_eq!(logits(&m), merged_logits, "a passed check leaves the model merged");
}
