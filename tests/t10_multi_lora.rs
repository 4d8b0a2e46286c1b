//! Grader for challenge 2, several adapters on one base (book/src/t10_multi_lora.md).
//!
//! Run: `cargo test --features exercises --test t10_multi_lora`.

#[macro_use]
mod common;

use candle_core::{DType, Tensor};
use common::*;
use lora_from_scratch::models::load::{load_model, LoadOptions, LoadedModel};
use lora_from_scratch::serving::per_row::PerRowServing;
use lora_from_scratch::tasks::t01_lora_layer::LoraLayer;
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t04_save_load::save_lora_weights;
use lora_from_scratch::tasks::t08_merge::lora_delta;
use lora_from_scratch::tasks::t10_multi_lora::per_row_lora;
use lora_from_scratch::tasks::t10_multi_lora::{combine, AdapterSet, Combination};
use lora_from_scratch::LoraConfig;
use proptest::prelude::*;

const VOCAB: usize = 101;

fn base() -> LoadedModel {
    load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap()
}

/// Inject an adapter with random B (a fresh one is zero), and move it into `set` as `name`.
fn add(set: &mut AdapterSet, m: &mut LoadedModel, name: &str, r: usize, targets: &[&str], seed: u64) -> LoraConfig {
    let config = LoraConfig { seed, ..LoraConfig::new(r, 2.0 * r as f64, targets) };
    inject_lora(m.model.as_mut(), &config).unwrap();
    for (i, (_, v)) in get_lora_parameters(m.model.as_ref()).into_iter().enumerate() {
        v.set(&(randn(&mut rng(seed * 100 + i as u64), v.dims(), DType::F32) * 0.2).unwrap()).unwrap();
    }
    set.take_from(m.model.as_mut(), name, config.clone()).unwrap();
    config
}

fn logits(m: &LoadedModel, ids: &Tensor) -> Vec<f64> {
    values(&m.model.forward(ids, None, false).unwrap())
}

/// The logits of the base with `updates` (module, ΔW) added to its weights: the reference an
/// adapter's outputs must equal.
fn merged_logits(updates: &[(String, Tensor)], ids: &Tensor) -> Vec<f64> {
    let mut m = base();
    for (name, slot) in m.model.linears_mut() {
        if let Some((_, d)) = updates.iter().find(|(n, _)| *n == name) {
            let w = (slot.base_weight().unwrap() + d).unwrap();
            *slot =
                lora_from_scratch::LinearSlot::Linear(lora_from_scratch::Linear::frozen(&w, slot.base_bias()).unwrap());
        }
    }
    logits(&m, ids)
}

fn deltas(set: &AdapterSet, name: &str, weight: f64) -> Vec<(String, Tensor)> {
    set.get(name).unwrap().layers.iter().map(|(n, l)| (n.clone(), (lora_delta(l).unwrap() * weight).unwrap())).collect()
}

#[test]
fn switching_changes_the_outputs_as_each_adapter_says_and_back() {
    book("t10_multi_lora", "Switching adapters");
    let (mut m, mut set) = (base(), AdapterSet::new());
    let ids = token_ids(&mut rng(1), 2, 6, VOCAB);
    let plain = logits(&m, &ids);
    add(&mut set, &mut m, "a", 4, &["q_proj", "v_proj"], 1);
    add(&mut set, &mut m, "b", 2, &["up_proj", "o_proj"], 2);
    assert_eq!(set.names(), vec!["a", "b"]);
    assert_eq!(logits(&m, &ids), plain, "taking adapters out leaves the base");

    set.set_active(m.model.as_mut(), Some("a")).unwrap();
    let with_a = logits(&m, &ids);
    assert_close!(with_a, merged_logits(&deltas(&set, "a", 1.0), &ids), 1e-5, "adapter a active");
    set.set_active(m.model.as_mut(), Some("b")).unwrap();
    assert_eq!(set.active(), Some("b"));
    assert_close!(logits(&m, &ids), merged_logits(&deltas(&set, "b", 1.0), &ids), 1e-5, "adapter b active");
    set.set_active(m.model.as_mut(), None).unwrap();
    assert_eq!(logits(&m, &ids), plain, "no adapter: exactly the base");
    set.set_active(m.model.as_mut(), Some("a")).unwrap();
    assert_eq!(logits(&m, &ids), with_a, "back to a: exactly as before");
}

#[test]
fn unknown_or_misfit_adapters_are_errors_that_change_nothing() {
    book("t10_multi_lora", "Switching adapters");
    let (mut m, mut set) = (base(), AdapterSet::new());
    let ids = token_ids(&mut rng(3), 1, 5, VOCAB);
    add(&mut set, &mut m, "a", 2, &["q_proj"], 3);
    set.set_active(m.model.as_mut(), Some("a")).unwrap();
    let before = logits(&m, &ids);
    assert!(set.set_active(m.model.as_mut(), Some("nope")).is_err());
    assert!(set.delete(m.model.as_mut(), "nope").is_err());
    assert!(set.take_from(m.model.as_mut(), "a", LoraConfig::new(2, 4.0, &["q_proj"])).is_err(), "names are unique");
    assert_eq!(set.active(), Some("a"));
    assert_eq!(logits(&m, &ids), before);
}

#[test]
fn loading_from_disk_and_deleting() {
    book("t10_multi_lora", "Loading and deleting");
    let (mut m, mut set) = (base(), AdapterSet::new());
    let ids = token_ids(&mut rng(4), 2, 5, VOCAB);
    let plain = logits(&m, &ids);
    let config = add(&mut set, &mut m, "a", 3, &["v_proj", "down_proj"], 4);
    set.set_active(m.model.as_mut(), Some("a")).unwrap();
    let with_a = logits(&m, &ids);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(m.model.as_ref(), &config, dir.path()).unwrap();
    // Loaded from its PEFT files under another name, the same adapter gives the same outputs,
    // and loading leaves the active adapter active.
    set.load(m.model.as_mut(), "a_again", dir.path()).unwrap();
    assert_eq!(set.active(), Some("a"));
    set.set_active(m.model.as_mut(), Some("a_again")).unwrap();
    assert_eq!(logits(&m, &ids), with_a);
    set.delete(m.model.as_mut(), "a_again").unwrap();
    assert_eq!(set.active(), None, "deleting the active adapter leaves the base");
    assert_eq!(logits(&m, &ids), plain);
    assert_eq!(set.names(), vec!["a"]);
}

proptest! {
    #![proptest_config(proptest_config(8))]

    /// "cat" stacks the ranks, so its update is exactly the weighted sum of the adapters'.
    #[test]
    fn cat_is_exactly_the_weighted_sum(w1 in -1.0f64..2.0, w2 in -1.0f64..2.0, seed in 0u64..1000) {
        book("t10_multi_lora", "Combining adapters");
        let (mut m, mut set) = (base(), AdapterSet::new());
        add(&mut set, &mut m, "a", 2, &["q_proj", "v_proj"], seed);
        add(&mut set, &mut m, "b", 3, &["q_proj", "up_proj"], seed + 1);
        set.add_weighted("ab", &[("a", w1), ("b", w2)], Combination::Cat).unwrap();
        let ab = set.get("ab").unwrap();
        for (module, l) in &ab.layers {
            let mut want: Option<Tensor> = None;
            for (name, w) in [("a", w1), ("b", w2)] {
                if let Some(part) = set.get(name).unwrap().layers.get(module) {
                    let d = (lora_delta(part).unwrap() * w).unwrap();
                    want = Some(match want { Some(t) => (t + d).unwrap(), None => d });
                }
            }
            let got = lora_delta(l).unwrap();
            prop_assert_close!(values(&got), values(&want.unwrap()), 1e-5, "{}: cat's update is the sum of the updates", module);
        }
        prop_assert_eq!(ab.layers.get("model.layers.0.self_attn.q_proj").unwrap().rank(), 5, "ranks add");
        // And the model with it gives the merged sum's outputs.
        let ids = token_ids(&mut rng(seed), 1, 5, VOCAB);
        set.set_active(m.model.as_mut(), Some("ab")).unwrap();
        let mut sum = deltas(&set, "a", w1);
        for (n, d) in deltas(&set, "b", w2) {
            match sum.iter_mut().find(|(m, _)| *m == n) {
                Some((_, t)) => *t = (&*t + &d).unwrap(),
                None => sum.push((n, d)),
            }
        }
        prop_assert_close!(logits(&m, &ids), merged_logits(&sum, &ids), 1e-5, "the cat adapter gives the summed updates' logits");
    }

    /// "linear" sums √(w s) A and √(w s) B (PEFT's rule): one adapter gives exactly w times its
    /// update; two give the weighted sum plus the cross terms B_i A_j.
    #[test]
    fn linear_follows_peft_rule(w1 in 0.0f64..2.0, w2 in 0.0f64..2.0, seed in 0u64..1000) {
        book("t10_multi_lora", "Combining adapters");
        let g = &mut rng(seed);
        let cfg = LoraConfig::new(3, 6.0, &["q_proj"]);
        let mk = |g: &mut rand::rngs::StdRng| {
            LoraLayer::from_tensors(&randn(g, &[3, 7], DType::F32), &randn(g, &[5, 3], DType::F32), &cfg).unwrap()
        };
        let (l1, l2) = (mk(g), mk(g));
        let (a, b) = combine(&[(&l1, w1)], Combination::Linear).unwrap();
        let one = values(&b.matmul(&a).unwrap());
        let want = values(&(lora_delta(&l1).unwrap() * w1).unwrap());
        prop_assert_close!(one, want, 1e-4, "linear with one adapter is w times its update");
        let (a, b) = combine(&[(&l1, w1), (&l2, w2)], Combination::Linear).unwrap();
        let s = 2.0f64; // alpha / r
        let (c1, c2) = ((w1 * s).sqrt(), (w2 * s).sqrt());
        let want_a = (l1.a().tensor() * c1).unwrap().add(&(l2.a().tensor() * c2).unwrap()).unwrap();
        let want_b = (l1.b().tensor() * c1).unwrap().add(&(l2.b().tensor() * c2).unwrap()).unwrap();
        prop_assert_close!(values(&a), values(&want_a), 1e-5, "linear's A is the sum of sqrt(w s) A");
        prop_assert_close!(values(&b), values(&want_b), 1e-5, "linear's B is the sum of sqrt(w s) B");
        prop_assert!(combine(&[(&l1, 1.0), (&LoraLayer::from_tensors(&randn(g, &[2, 7], DType::F32), &randn(g, &[5, 2], DType::F32), &LoraConfig::new(2, 4.0, &["q_proj"])).unwrap(), 1.0)], Combination::Linear).is_err(), "linear needs equal ranks");
    }

    /// Each row gathers its own adapter: row by row, the same as that adapter alone.
    #[test]
    fn per_row_lora_is_each_rows_own_adapter(seed in 0u64..1000, batch in 1usize..5, seq in 1usize..4) {
        book("t10_multi_lora", "A batch of many adapters");
        let g = &mut rng(seed);
        let (k, r, i, o) = (3, 2, 6, 4);
        let (a, b) = (randn(g, &[k, r, i], DType::F32), randn(g, &[k, o, r], DType::F32));
        let scale = Tensor::new(&[0.5f32, 2.0, 0.0], &CPU).unwrap();
        let rows: Vec<u32> = (0..batch).map(|j| ((j as u64 + seed) % k as u64) as u32).collect();
        let x = randn(g, &[batch, seq, i], DType::F32);
        let y = per_row_lora(&x, &a, &b, &scale, &Tensor::new(rows.as_slice(), &CPU).unwrap()).unwrap();
        prop_assert_eq!(y.dims(), &[batch, seq, o]);
        for (j, &kk) in rows.iter().enumerate() {
            let xj = x.get(j).unwrap();
            let want = xj.matmul(&a.get(kk as usize).unwrap().t().unwrap()).unwrap()
                .matmul(&b.get(kk as usize).unwrap().t().unwrap()).unwrap();
            let want = (want * [0.5, 2.0, 0.0][kk as usize]).unwrap();
            prop_assert_close!(values(&y.get(j).unwrap()), values(&want), 1e-5, "row {} must use its own adapter", j);
        }
    }
}

/// A mixed batch, each sequence with its own adapter (or none), gives each sequence the
/// outputs it gets alone with its adapter active.
#[test]
fn a_mixed_batch_equals_one_by_one() {
    book("t10_multi_lora", "A batch of many adapters");
    let (mut m, mut set) = (base(), AdapterSet::new());
    add(&mut set, &mut m, "a", 4, &["q_proj", "v_proj"], 5);
    add(&mut set, &mut m, "b", 2, &["q_proj", "down_proj"], 6);
    let rows = [Some("b"), None, Some("a"), Some("b")];
    let ids = token_ids(&mut rng(7), rows.len(), 6, VOCAB);
    set.set_per_row(m.model.as_mut(), &rows).unwrap();
    let mixed = m.model.forward(&ids, None, false).unwrap();
    for (i, r) in rows.iter().enumerate() {
        set.set_active(m.model.as_mut(), *r).unwrap();
        let alone = m.model.forward(&ids.narrow(0, i, 1).unwrap(), None, false).unwrap();
        assert_close!(
            values(&mixed.get(i).unwrap()),
            values(&alone.get(0).unwrap()),
            1e-5,
            "row {i} ({r:?}) must equal running it alone"
        );
    }
    // Ending the mixed batch: the base alone again.
    set.clear(m.model.as_mut()).unwrap();
    assert!(m.model.linears().iter().all(|(_, s)| matches!(s, lora_from_scratch::LinearSlot::Linear(_))));
}
