//! Support code of several adapters on one base (`src/multi.rs`, `generate::greedy_batch`).

mod common;

use candle_core::DType;
use common::*;
use lora_from_scratch::inference::generate::{generate, greedy_batch, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::serving::per_row::PerRowLinear;
use lora_from_scratch::tasks::t01_lora_layer::LoraLayer;
use lora_from_scratch::LoraConfig;

/// Prompts of different lengths in one right-padded batch continue exactly as each does alone.
#[test]
fn greedy_batch_equals_each_prompt_alone() {
    let m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let g = &mut rng(1);
    let prompts: Vec<Vec<u32>> = [3usize, 7, 1, 5]
        .iter()
        .map(|&n| token_ids(g, 1, n, 101).flatten_all().unwrap().to_vec1::<u32>().unwrap())
        .collect();
    let stop = vec![2u32];
    let batch = greedy_batch(m.model.as_ref(), &prompts, 6, &stop).unwrap();
    let opts = GenerateOptions { max_new_tokens: 6, sampling: Sampling::greedy(), stop_ids: stop.clone() };
    for (p, b) in prompts.iter().zip(&batch) {
        assert_eq!(&generate(m.model.as_ref(), p, &opts).unwrap().ids, b, "prompt {p:?}");
    }
    assert!(greedy_batch(m.model.as_ref(), &[vec![]], 3, &stop).is_err(), "an empty prompt is an error");
}

#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (LoraLayer); graded by tests/t*.rs")]
fn a_per_row_layer_checks_its_parts() {
    let m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let slot = m.model.linears()[0].1.clone();
    let (in_f, out_f) = slot.features();
    let cfg = LoraConfig::new(2, 4.0, &["q_proj"]);
    let fits = LoraLayer::from_tensors(
        &randn(&mut rng(2), &[2, in_f], DType::F32),
        &randn(&mut rng(3), &[out_f, 2], DType::F32),
        &cfg,
    )
    .unwrap();
    let misfit = LoraLayer::from_tensors(
        &randn(&mut rng(4), &[2, in_f + 1], DType::F32),
        &randn(&mut rng(5), &[out_f, 2], DType::F32),
        &cfg,
    )
    .unwrap();
    assert!(PerRowLinear::new(slot.clone(), &[&misfit], &[Some(0)]).is_err(), "an adapter of another shape");
    assert!(PerRowLinear::new(slot.clone(), &[&fits], &[Some(1)]).is_err(), "a row naming no adapter");
    let adapted = slot.with_adapter(fits.clone()).unwrap();
    assert!(PerRowLinear::new(adapted, &[&fits], &[Some(0)]).is_err(), "a base that carries an adapter");
    let p = PerRowLinear::new(slot, &[&fits], &[Some(0), None]).unwrap();
    let x = randn(&mut rng(6), &[3, 2, in_f], DType::F32);
    assert!(p.forward(&x).is_err(), "a batch of 3 rows for 2 row assignments");
}
