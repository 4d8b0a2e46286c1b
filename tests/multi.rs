//! Support code of several adapters on one base (`src/serving/`, `generate::greedy_batch`).

mod common;

use candle_core::DType;
use common::*;
use lora_from_scratch::inference::generate::{generate, greedy_batch, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::serving::per_row::PerRowLinear;
use lora_from_scratch::tasks::t01_lora_layer::LoraLayer;
use lora_from_scratch::LoraConfig;

/// Prompts of different lengths, left-padded into one batch and decoded together with a KV
/// cache, continue exactly as each does alone, on both model families: Llama (RoPE, so each
/// row's positions must start at its first real token) and GPT-2 (learned absolute positions);
/// and with a sliding window (Mistral on every layer, Qwen2 on one), which must count keys from
/// each row's own tokens.
#[test]
fn greedy_batch_equals_each_prompt_alone() {
    let fixtures = ["tiny-llama", "tiny-gpt2", "tiny-qwen2", "tiny-mistral"].map(|f| format!("tests/fixtures/{f}"));
    for fixture in &fixtures {
        let m = load_model(fixture.as_str(), &LoadOptions::default()).unwrap();
        let g = &mut rng(1);
        let vocab = m.model.vocab_size();
        let prompts: Vec<Vec<u32>> = [3usize, 7, 1, 5]
            .iter()
            .map(|&n| token_ids(g, 1, n, vocab.min(101)).flatten_all().unwrap().to_vec1::<u32>().unwrap())
            .collect();
        // No stop id among the tokens these produce, so every row decodes all 8 and the
        // comparison covers every step (a stop id would end a row early).
        let stop = vec![vocab as u32 - 1];
        let batch = greedy_batch(m.model.as_ref(), &prompts, 8, &stop).unwrap();
        let opts = GenerateOptions { max_new_tokens: 8, sampling: Sampling::greedy(), stop_ids: stop.clone() };
        for (p, b) in prompts.iter().zip(&batch) {
            assert_eq!(&generate(m.model.as_ref(), p, &opts).unwrap().ids, b, "{fixture}: prompt {p:?}");
        }
        assert!(batch.iter().all(|b| b.len() == 8), "{fixture}: a row stopped early: {batch:?}");
        assert!(greedy_batch(m.model.as_ref(), &[vec![]], 3, &stop).is_err(), "an empty prompt is an error");
        assert_eq!(greedy_batch(m.model.as_ref(), &prompts, 0, &stop).unwrap(), vec![Vec::<u32>::new(); 4]);
    }
}

/// A left-padded cache must be given the batch it was made for: a wrong row count is an error.
#[test]
fn a_left_padded_cache_checks_its_batch() {
    let m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let mut cache = m.model.new_cache().left_padded(vec![0, 2]).unwrap();
    let ids = token_ids(&mut rng(3), 3, 4, 101);
    let err = m.model.forward(&ids, Some(&mut cache), false).unwrap_err().to_string();
    assert!(err.contains("[2, seq]") && err.contains("[3, 4]"), "{err}");
}

/// A mixed batch, each request with its own adapter, decoded together with the KV cache,
/// answers each request as it is answered alone with its adapter active.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task code (t01-t10); graded by tests/t*.rs")]
fn greedy_batch_with_an_adapter_per_row_equals_each_alone() {
    use lora_from_scratch::serving::per_row::PerRowServing;
    use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
    use lora_from_scratch::tasks::t10_multi_lora::AdapterSet;
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let mut set = AdapterSet::new();
    for (name, seed) in [("a", 5u64), ("b", 6)] {
        let config = LoraConfig { seed, ..LoraConfig::new(2, 4.0, &["q_proj", "v_proj", "down_proj"]) };
        inject_lora(m.model.as_mut(), &config).unwrap();
        for (i, (_, v)) in get_lora_parameters(m.model.as_ref()).into_iter().enumerate() {
            v.set(&(randn(&mut rng(seed * 100 + i as u64), v.dims(), DType::F32) * 0.5).unwrap()).unwrap();
        }
        set.take_from(m.model.as_mut(), name, config).unwrap();
    }
    let g = &mut rng(8);
    let prompts: Vec<Vec<u32>> = [4usize, 2, 6]
        .iter()
        .map(|&n| token_ids(g, 1, n, 101).flatten_all().unwrap().to_vec1::<u32>().unwrap())
        .collect();
    let rows = [Some("a"), None, Some("b")];
    let stop = vec![100u32];
    set.set_per_row(m.model.as_mut(), &rows).unwrap();
    let mixed = greedy_batch(m.model.as_ref(), &prompts, 6, &stop).unwrap();
    let opts = GenerateOptions { max_new_tokens: 6, sampling: Sampling::greedy(), stop_ids: stop };
    for ((p, r), b) in prompts.iter().zip(rows).zip(&mixed) {
        set.set_active(m.model.as_mut(), r).unwrap();
        assert_eq!(&generate(m.model.as_ref(), p, &opts).unwrap().ids, b, "adapter {r:?}, prompt {p:?}");
    }
    // The adapters change the answers, or the comparison above would prove nothing.
    set.set_active(m.model.as_mut(), None).unwrap();
    let base = generate(m.model.as_ref(), &prompts[0], &opts).unwrap().ids;
    assert_ne!(base, mixed[0], "adapter a left the answer to prompt 0 unchanged");
}

#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (LoraLayer); graded by tests/t*.rs")]
fn a_per_row_layer_checks_its_parts() {
    let m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let slot = m.model.linears()[0].1.clone();
    let (in_f, out_f) = slot.in_out_features();
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
