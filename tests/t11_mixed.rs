//! Grader for challenge 3, LoRA mixed with full fine-tuning (book/src/t11_mixed.md).
//!
//! Run: `cargo test --features exercises --test t11_mixed`.
//! The PEFT fixture comes from `scripts/make_mixed_fixture.py`.

#[macro_use]
mod common;

use std::collections::HashMap;

use candle_core::DType;
use common::*;
use lora_from_scratch::models::load::{load_model, LoadOptions, LoadedModel};
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t11_mixed::load_mixed;
use lora_from_scratch::tasks::t11_mixed::{find_modules_to_save, mixed_groups, save_mixed, unfreeze_modules_to_save};
use lora_from_scratch::train::optim::{AdamW, AdamWParams};
use lora_from_scratch::LoraConfig;

const VOCAB: usize = 101;
const NORMS: [&str; 5] = [
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.1.input_layernorm.weight",
    "model.layers.1.post_attention_layernorm.weight",
    "model.norm.weight",
];

fn base() -> LoadedModel {
    load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Every parameter's bits, adapters included, by name.
fn all_bits(m: &LoadedModel) -> HashMap<String, Vec<u32>> {
    let mut out: HashMap<String, Vec<u32>> = m
        .model
        .linears()
        .into_iter()
        .map(|(n, s)| (format!("{n}.weight"), bits(&s.base_weight().unwrap())))
        .chain(m.model.params().into_iter().map(|(n, p)| (n, bits(p.tensor()))))
        .collect();
    for (n, v) in get_lora_parameters(m.model.as_ref()) {
        out.insert(n, bits(v.as_tensor()));
    }
    out
}

#[test]
fn modules_are_selected_by_peft_suffix_rule() {
    book("t11_mixed", "Choosing the modules");
    let mut m = base();
    let mut want: Vec<String> = strings(&NORMS);
    want.sort();
    assert_eq!(
        find_modules_to_save(m.model.as_ref(), &strings(&["norm"])).unwrap(),
        want,
        "`norm` selects every RMSNorm"
    );
    assert_eq!(find_modules_to_save(m.model.as_ref(), &strings(&["lm_head"])).unwrap(), vec!["lm_head.weight"]);
    let err = find_modules_to_save(m.model.as_ref(), &strings(&["nowhere"])).unwrap_err().to_string();
    assert!(err.contains("nowhere"), "{err}");
    // A module name must end with the entry: `embed` is inside `model.embed_tokens`, not its end.
    let err = find_modules_to_save(m.model.as_ref(), &strings(&["embed"]));
    assert!(err.is_err(), "`embed` ends no module's name, so it selects nothing: {err:?}");
    inject_lora(m.model.as_mut(), &LoraConfig::new(2, 4.0, &["q_proj"])).unwrap();
    let err = find_modules_to_save(m.model.as_ref(), &strings(&["q_proj"])).unwrap_err().to_string();
    assert!(
        err.contains("q_proj") && err.contains("adapter"),
        "a module is trained in full or with LoRA, not both: {err}"
    );
}

/// One mixed step: exactly the adapters and the chosen modules move, each group by its own
/// learning rate (Adam's first step moves every weight with a gradient by about lr).
#[test]
fn a_mixed_step_moves_only_the_chosen_weights_each_at_its_rate() {
    book("t11_mixed", "Learning rates per group");
    let mut m = base();
    inject_lora(m.model.as_mut(), &LoraConfig::new(2, 4.0, &["q_proj", "v_proj"])).unwrap();
    for (i, (_, v)) in get_lora_parameters(m.model.as_ref()).into_iter().enumerate() {
        v.set(&(randn(&mut rng(20 + i as u64), v.dims(), DType::F32) * 0.1).unwrap()).unwrap();
    }
    let full = unfreeze_modules_to_save(m.model.as_mut(), &strings(&["norm", "lm_head"])).unwrap();
    assert_eq!(full.len(), 6, "five norms and the head");
    let (lr, ratio, full_scale) = (1e-3, 16.0, 0.25);
    let groups = mixed_groups(m.model.as_ref(), full, ratio, full_scale);
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, vec!["lora_A", "lora_B", "modules_to_save"]);
    // LoRA+ speeds up B, not A: the scales are the paper's, written out here.
    for (group, holds, scale) in [("lora_A", "lora_A", 1.0), ("lora_B", "lora_B", 16.0), ("modules_to_save", "", 0.25)]
    {
        let g = groups.iter().find(|g| g.name == group).unwrap();
        assert_eq!(g.lr_scale, scale, "group {group} runs at {} times the learning rate, not {scale}", g.lr_scale);
        assert!(
            g.vars.iter().all(|(n, _)| n.contains(holds) && (!holds.is_empty() || !n.contains("lora_"))),
            "group {group} holds {:?}",
            g.vars.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
    }
    let before = all_bits(&m);
    let values_before: HashMap<String, Vec<f64>> =
        groups.iter().flat_map(|g| g.vars.iter().map(|(n, v)| (n.clone(), values(v.as_tensor())))).collect();
    let scale_of: HashMap<String, f64> =
        groups.iter().flat_map(|g| g.vars.iter().map(|(n, _)| (n.clone(), g.lr_scale))).collect();
    let vars: Vec<(String, candle_core::Var)> = groups.iter().flat_map(|g| g.vars.clone()).collect();
    let mut opt = AdamW::with_groups(groups, AdamWParams { lr, weight_decay: 0.0, ..Default::default() }).unwrap();
    let ids = token_ids(&mut rng(5), 2, 6, VOCAB);
    let g = randn(&mut rng(6), &[2, 6, VOCAB], DType::F32);
    let grads = (m.model.forward(&ids, None, true).unwrap() * &g).unwrap().sum_all().unwrap().backward().unwrap();
    opt.step(&grads).unwrap();

    let after = all_bits(&m);
    for (name, b) in &before {
        let trained = scale_of.contains_key(name);
        assert_eq!(after[name] != *b, trained, "{name}: {}", if trained { "did not move" } else { "moved" });
    }
    // Adam's first step is lr * g / (|g| + eps): about lr times the group's scale per element.
    for (name, v) in &vars {
        let moved: Vec<f64> =
            values(v.as_tensor()).iter().zip(&values_before[name]).map(|(a, b)| (a - b).abs()).collect();
        let largest = moved.iter().cloned().fold(0.0, f64::max);
        let want = lr * scale_of[name];
        assert_close!([largest], [want], 0.02 * want, "{name}: moves by its group's rate");
    }
}

#[test]
fn saved_and_loaded_in_pefts_format() {
    book("t11_mixed", "Saving in PEFT's format");
    let mut m = base();
    let config = LoraConfig::new(2, 4.0, &["q_proj", "v_proj"]);
    inject_lora(m.model.as_mut(), &config).unwrap();
    let full = unfreeze_modules_to_save(m.model.as_mut(), &strings(&["norm", "lm_head"])).unwrap();
    for (i, (_, v)) in get_lora_parameters(m.model.as_ref()).into_iter().chain(full).enumerate() {
        v.set(&(v.as_tensor() + (randn(&mut rng(40 + i as u64), v.dims(), DType::F32) * 0.1).unwrap()).unwrap())
            .unwrap();
    }
    let ids = token_ids(&mut rng(7), 2, 6, VOCAB);
    let trained = values(&m.model.forward(&ids, None, false).unwrap());
    let dir = tempfile::tempdir().unwrap();
    save_mixed(m.model.as_ref(), &config, &strings(&["norm", "lm_head"]), dir.path()).unwrap();
    // The keys PEFT writes for the same setup (the committed fixture).
    let ours = candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &CPU).unwrap();
    let peft =
        candle_core::safetensors::load("tests/fixtures/peft_mixed/adapter/adapter_model.safetensors", &CPU).unwrap();
    let (mut a, mut b): (Vec<&String>, Vec<&String>) = (ours.keys().collect(), peft.keys().collect());
    a.sort();
    b.sort();
    assert_eq!(a, b, "our keys are PEFT's");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["modules_to_save"], serde_json::json!(["norm", "lm_head"]));

    let mut fresh = base();
    let (loaded, modules) = load_mixed(fresh.model.as_mut(), dir.path()).unwrap();
    assert_eq!((loaded.r, modules), (2, strings(&["norm", "lm_head"])));
    assert_eq!(values(&fresh.model.forward(&ids, None, false).unwrap()), trained, "the same model back, bit for bit");
}

/// An adapter PEFT trained with modules_to_save gives PEFT's logits here.
#[test]
fn a_peft_adapter_with_modules_to_save_gives_pefts_logits() {
    book("t11_mixed", "Saving in PEFT's format");
    let mut m = base();
    load_mixed(m.model.as_mut(), "tests/fixtures/peft_mixed/adapter".as_ref()).unwrap();
    let r = candle_core::safetensors::load("tests/fixtures/peft_mixed/logits.safetensors", &CPU).unwrap();
    let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
    let ours = values(&m.model.forward(&ids, None, false).unwrap());
    assert_close!(ours, values(&r["logits"]), 1e-4, "logits must be PEFT's");
    // Without the modules (adapter alone) they would not: the saved norms and head matter.
    let mut lora_only = base();
    lora_from_scratch::tasks::t03_inject::inject_lora(
        lora_only.model.as_mut(),
        &LoraConfig::new(2, 4.0, &["q_proj", "v_proj"]),
    )
    .unwrap();
    assert!(max_abs_diff(&values(&lora_only.model.forward(&ids, None, false).unwrap()), &values(&r["logits"])) > 1e-2);
}

#[test]
fn a_missing_module_tensor_is_an_error_that_changes_nothing() {
    book("t11_mixed", "Saving in PEFT's format");
    let dir = tempfile::tempdir().unwrap();
    let src = std::path::Path::new("tests/fixtures/peft_mixed/adapter");
    let mut tensors = candle_core::safetensors::load(src.join("adapter_model.safetensors"), &CPU).unwrap();
    tensors.remove("base_model.model.model.norm.weight");
    candle_core::safetensors::save(&tensors, dir.path().join("adapter_model.safetensors")).unwrap();
    std::fs::copy(src.join("adapter_config.json"), dir.path().join("adapter_config.json")).unwrap();
    let mut m = base();
    let ids = token_ids(&mut rng(8), 1, 5, VOCAB);
    let before = values(&m.model.forward(&ids, None, false).unwrap());
    let err = load_mixed(m.model.as_mut(), dir.path()).unwrap_err().to_string();
    assert!(err.contains("model.norm.weight"), "the error names the missing tensor: {err}");
    assert_eq!(values(&m.model.forward(&ids, None, false).unwrap()), before);
    assert!(m.model.linears().iter().all(|(_, s)| s.adapter().is_none()), "no adapter was installed");
}

/// The tiny Llama with adapters on q and v, trained with `norm` in full by `train_mixed`.
fn train_mixed_run(
    m: &mut LoadedModel,
    cfg: &lora_from_scratch::tasks::t06_train::TrainConfig,
) -> lora_from_scratch::train::history::TrainHistory {
    let lora = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    if get_lora_parameters(m.model.as_ref()).is_empty() {
        inject_lora(m.model.as_mut(), &lora).unwrap();
    }
    let train = own_label_examples(5);
    lora_from_scratch::tasks::t11_mixed::train_mixed(
        m.model.as_mut(),
        &lora,
        &strings(&["norm"]),
        4.0,
        0.5,
        &train,
        &train,
        0,
        cfg,
    )
    .unwrap()
}

/// `train_mixed` runs t06's loop over a `MixedTrainee`: the loss falls, the chosen modules are
/// trained in full beside the adapters, and the best state, saved with `save_mixed`, loads back
/// into a fresh model with `load_mixed` as the trained model.
#[test]
fn training_saves_a_best_state_that_loads_back() {
    book("t11_mixed", "Training");
    let dir = tempfile::tempdir().unwrap();
    let steps = 8;
    let mut m = base();
    let before = all_bits(&m);
    let h = train_mixed_run(&mut m, &train_config(dir.path(), steps, steps));
    assert_eq!(h.train.len(), steps, "one history entry per step");
    assert!(h.train[steps - 1].loss < h.train[0].loss, "the loss must fall: {:?}", h.train);
    let after = all_bits(&m);
    assert_ne!(after["model.norm.weight"], before["model.norm.weight"], "the chosen module is trained in full");
    assert_eq!(
        after["model.embed_tokens.weight"], before["model.embed_tokens.weight"],
        "the rest of the base stays frozen"
    );

    let ids = candle_core::Tensor::new(&[[3u32, 1, 4, 1, 5]], &CPU).unwrap();
    let trained = bits(&m.model.forward(&ids, None, false).unwrap());
    let mut fresh = base();
    load_mixed(fresh.model.as_mut(), &dir.path().join("best")).unwrap();
    assert_eq!(
        bits(&fresh.model.forward(&ids, None, false).unwrap()),
        trained,
        "the best state (the last step, here) must load back into a fresh model exactly"
    );
}

/// A mixed run stopped after its checkpoint and resumed in a fresh process (a fresh model)
/// ends where the uninterrupted run ends: the checkpoint holds the trained modules too.
#[test]
fn an_interrupted_mixed_run_resumes_exactly() {
    book("t11_mixed", "Training");
    use lora_from_scratch::tasks::t06_train::TrainConfig;
    let (whole, parts) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut uninterrupted = base();
    train_mixed_run(&mut uninterrupted, &train_config(whole.path(), 8, 4));
    let mut first = base();
    train_mixed_run(&mut first, &TrainConfig { stop_after: Some(4), ..train_config(parts.path(), 8, 4) });
    let mut resumed = base();
    train_mixed_run(&mut resumed, &TrainConfig { resume: true, ..train_config(parts.path(), 8, 4) });
    assert_eq!(
        all_bits(&resumed),
        all_bits(&uninterrupted),
        "resuming from the step-4 checkpoint must give the uninterrupted run's weights, the full modules' included"
    );
}
