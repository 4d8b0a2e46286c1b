//! Grader for task 1.4, `save_lora_weights` / `load_lora_weights` (book/src/t04_save_load.md).
//!
//! Run: `cargo test --features exercises --test t04_save_load`.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use common::*;
use lora_from_scratch::models::tiny::TinyLm;
use lora_from_scratch::peft::format::{TargetModules, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use lora_from_scratch::tasks::t03_inject::{find_target_modules, get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t04_save_load::{adapter_config, load_lora_weights, save_lora_weights};
use lora_from_scratch::{LoraConfig, LoraError, LoraModel, TensorProblem};
use proptest::prelude::*;
use safetensors::SafeTensors;

/// A model with adapters whose A and B hold random values, as after training.
fn trained_model(seed: u64, cfg: &LoraConfig) -> TinyLm {
    let mut model = tiny(seed);
    inject_lora(&mut model, cfg).unwrap();
    let g = &mut rng(seed ^ 0xabc);
    for (_, var) in get_lora_parameters(&model) {
        var.set(&randn(g, var.as_tensor().dims(), DType::F32)).unwrap();
    }
    model
}

fn adapter_bits(model: &dyn LoraModel) -> Vec<(String, Vec<u32>)> {
    get_lora_parameters(model).into_iter().map(|(n, v)| (n, bits(v.as_tensor()))).collect()
}

/// Rewrite the weights file with `edit` applied to its tensors (no checksums, as PEFT writes it).
fn rewrite(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join(ADAPTER_WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&path, &CPU).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn mismatch(err: LoraError) -> Vec<TensorProblem> {
    match err {
        LoraError::AdapterMismatch { problems, .. } => problems,
        other => panic!("expected LoraError::AdapterMismatch listing each tensor, got: {other}"),
    }
}

proptest! {
    #![proptest_config(proptest_config(12))]

    #[test]
    fn save_then_load_is_bitwise(r in 1usize..6, mask in 1u8..128, seed in any::<u64>(), into_injected in any::<bool>()) {
        book("t04_save_load", "A round trip");
        let kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
        let targets: Vec<&str> = kinds.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, k)| *k).collect();
        let cfg = LoraConfig::new(r, 2.0 * r as f64, &targets);
        let model = trained_model(seed, &cfg);
        let dir = tempfile::tempdir().unwrap();
        save_lora_weights(&model, &cfg, dir.path()).unwrap();

        // Into a bare base model (adapters placed by the saved config), or into one that already
        // has adapters with other values.
        let mut fresh = tiny(seed);
        if into_injected {
            let mut other = cfg.clone();
            other.seed = seed.wrapping_add(1);
            inject_lora(&mut fresh, &other).unwrap();
        }
        let loaded = load_lora_weights(&mut fresh, dir.path()).unwrap();
        prop_assert_eq!(loaded.r, r, "the loaded config must carry r");
        prop_assert_eq!(loaded.alpha, cfg.alpha, "the loaded config must carry alpha");
        prop_assert_eq!(adapter_bits(&fresh), adapter_bits(&model), "a save/load round trip must restore A and B bit for bit");
        let ids = token_ids(&mut rng(seed), 2, 4, model.config().vocab_size);
        prop_assert_eq!(bits(&fresh.forward(&ids, false).unwrap()), bits(&model.forward(&ids, false).unwrap()),
            "the loaded model must give the saved model's logits bit for bit");
    }
}

proptest! {
    #![proptest_config(proptest_config(24))]

    /// PEFT re-applies `target_modules` to the base model to know where adapters go: the saved
    /// names must select the adapted modules and no others.
    #[test]
    fn the_saved_targets_select_exactly_the_adapted_modules(mask in 1u8..128, layer0_only in any::<u8>(),
                                                            seed in any::<u64>()) {
        book("t04_save_load", "PEFT's keys");
        // Each chosen kind in every layer, or (by a longer name) in layer 0 only.
        let kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
        let targets: Vec<String> = (0..kinds.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| match layer0_only & (1 << i) != 0 {
                true => format!("layers.0.{}.{}", if i < 4 { "self_attn" } else { "mlp" }, kinds[i]),
                false => kinds[i].to_string(),
            })
            .collect();
        let refs: Vec<&str> = targets.iter().map(String::as_str).collect();
        let cfg = LoraConfig::new(2, 4.0, &refs);
        let mut model = tiny(seed);
        inject_lora(&mut model, &cfg).unwrap();
        let adapted: Vec<String> =
            model.linears().into_iter().filter(|(_, s)| s.adapter().is_some()).map(|(n, _)| n).collect();
        let TargetModules::List(saved) = adapter_config(&model, &cfg).target_modules else {
            panic!("target_modules must be written as a list of names");
        };
        prop_assert_eq!(find_target_modules(&tiny(seed), &saved).unwrap(), adapted.clone(),
            "the saved target_modules {:?} must select exactly the adapted modules", saved);
        if layer0_only & mask == 0 {
            let mut short: Vec<&str> = (0..kinds.len()).filter(|i| mask & (1 << i) != 0).map(|i| kinds[i]).collect();
            short.sort();
            let mut got: Vec<&str> = saved.iter().map(String::as_str).collect();
            got.sort();
            prop_assert_eq!(got, short, "where the last name parts select the adapted modules, PEFT writes those");
        }
    }
}

#[test]
fn the_files_are_in_peft_format() {
    book("t04_save_load", "PEFT's keys");
    let cfg = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    let model = trained_model(1, &cfg);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(&model, &cfg, dir.path()).unwrap();

    let bytes = std::fs::read(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut keys: Vec<&str> = st.names();
    keys.sort();
    let mut want = Vec::new();
    for l in 0..2 {
        for m in ["q_proj", "v_proj"] {
            for ab in ["A", "B"] {
                want.push(format!("base_model.model.model.layers.{l}.self_attn.{m}.lora_{ab}.weight"));
            }
        }
    }
    want.sort();
    assert_eq!(
        keys, want,
        "keys must be exactly PEFT's `base_model.model.<module>.lora_A/B.weight`, and nothing of the base"
    );
    assert_eq!(st.tensor(&want[0]).unwrap().shape(), &[4, 16], "lora_A is stored [r, in]");
    assert_eq!(st.tensor(&want[1]).unwrap().shape(), &[16, 4], "lora_B is stored [out, r]");
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata().as_ref().and_then(|m| m.get("format")).map(String::as_str),
        Some("pt"),
        "transformers expects metadata format = pt"
    );

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 8.0);
    assert_eq!(config["lora_dropout"], 0.0);
    assert_eq!(config["bias"], "none");
    assert_eq!(config["fan_in_fan_out"], false);
    assert_eq!(config["use_rslora"], false);
    assert_eq!(config["init_lora_weights"], true);
    assert_eq!(config["base_model_name_or_path"], model.name_or_path());
    let mut targets: Vec<String> = serde_json::from_value(config["target_modules"].clone()).unwrap();
    targets.sort();
    assert_eq!(targets, vec!["q_proj", "v_proj"], "target_modules as PEFT writes them");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only the two files, no temporary files left behind: {leftovers:?}");
}

#[test]
fn a_wrong_shape_is_named_and_nothing_is_loaded() {
    book("t04_save_load", "Never half-load");
    let cfg = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(&trained_model(2, &cfg), &cfg, dir.path()).unwrap();
    let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    rewrite(dir.path(), |t| {
        t.insert(key.into(), Tensor::zeros((16, 3), DType::F32, &CPU).unwrap());
    });
    let mut model = tiny(2);
    let err = load_lora_weights(&mut model, dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(key) && text.contains("[16, 4]") && text.contains("[16, 3]"),
        "the error must name the tensor with expected and found shapes: {text}"
    );
    assert_eq!(
        mismatch(err),
        vec![TensorProblem::Shape { name: key.into(), expected: vec![16, 4], found: vec![16, 3] }]
    );
    assert!(get_lora_parameters(&model).is_empty(), "a failed load must leave the model unchanged, not half-loaded");
}

#[test]
fn missing_and_extra_keys_are_named() {
    book("t04_save_load", "Never half-load");
    let cfg = LoraConfig::new(2, 4.0, &["k_proj"]);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(&trained_model(3, &cfg), &cfg, dir.path()).unwrap();
    let gone = "base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight";
    let extra = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    rewrite(dir.path(), |t| {
        t.remove(gone);
        t.insert(extra.into(), Tensor::zeros((2, 16), DType::F32, &CPU).unwrap());
    });
    let mut model = tiny(3);
    inject_lora(&mut model, &cfg).unwrap();
    let before = adapter_bits(&model);
    let problems = mismatch(load_lora_weights(&mut model, dir.path()).unwrap_err());
    assert!(
        problems.contains(&TensorProblem::Missing { name: gone.into(), expected: vec![2, 16] }),
        "a missing tensor must be reported by name: {problems:?}"
    );
    assert!(
        problems.contains(&TensorProblem::Unexpected { name: extra.into(), found: vec![2, 16] }),
        "a tensor with no place in the model must be reported by name: {problems:?}"
    );
    assert_eq!(problems.len(), 2, "and nothing else: {problems:?}");
    assert_eq!(adapter_bits(&model), before, "the model's adapters must be untouched by a failed load");
}

#[test]
fn corrupt_bytes_are_named() {
    book("t04_save_load", "Corrupt files");
    let cfg = LoraConfig::new(2, 4.0, &["o_proj"]);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(&trained_model(4, &cfg), &cfg, dir.path()).unwrap();
    let path = dir.path().join(ADAPTER_WEIGHTS_FILE);
    let good = std::fs::read(&path).unwrap();

    // One flipped bit in the last tensor's data: finite, plausible, and wrong.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let mut model = tiny(4);
    let problems = mismatch(load_lora_weights(&mut model, dir.path()).unwrap_err());
    assert!(
        matches!(problems.as_slice(), [TensorProblem::Corrupt { name, .. }] if name.ends_with("lora_B.weight")),
        "a damaged tensor must be named: {problems:?}"
    );

    // A truncated file is an error naming the file.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let err = load_lora_weights(&mut model, dir.path()).unwrap_err();
    assert!(err.to_string().contains(ADAPTER_WEIGHTS_FILE), "a truncated file must be an error naming it: {err}");

    // Garbage JSON is an error naming the config file.
    std::fs::write(&path, &good).unwrap();
    std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), b"{ not json").unwrap();
    let err = load_lora_weights(&mut model, dir.path()).unwrap_err();
    assert!(err.to_string().contains(ADAPTER_CONFIG_FILE), "a corrupt config must be an error naming it: {err}");
    assert!(get_lora_parameters(&model).is_empty(), "no failed load may change the model");
}

#[test]
fn nan_values_are_refused_and_peft_files_without_checksums_load() {
    book("t04_save_load", "Corrupt files");
    let cfg = LoraConfig::new(2, 4.0, &["gate_proj"]);
    let model = trained_model(5, &cfg);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(&model, &cfg, dir.path()).unwrap();
    // Rewritten without our checksums, as PEFT would write it: must load.
    rewrite(dir.path(), |_| {});
    let mut fresh = tiny(5);
    load_lora_weights(&mut fresh, dir.path()).unwrap();
    assert_eq!(adapter_bits(&fresh), adapter_bits(&model), "a file without checksums (PEFT's) must load");

    let key = "base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight";
    rewrite(dir.path(), |t| {
        t.insert(key.into(), Tensor::new(&[[f32::NAN; 16]; 2], &CPU).unwrap());
    });
    let problems = mismatch(load_lora_weights(&mut tiny(5), dir.path()).unwrap_err());
    assert!(
        matches!(problems.as_slice(), [TensorProblem::Corrupt { name, .. }] if name == key),
        "NaN values must be refused, naming the tensor: {problems:?}"
    );
    // One bad value among finite ones must be caught too (a max over the values skips NaN).
    for bad in [f32::NAN, f32::INFINITY] {
        rewrite(dir.path(), |t| {
            let mut v = vec![0.5f32; 32];
            v[17] = bad;
            t.insert(key.into(), Tensor::from_vec(v, (2, 16), &CPU).unwrap());
        });
        let problems = mismatch(load_lora_weights(&mut tiny(5), dir.path()).unwrap_err());
        assert!(
            matches!(problems.as_slice(), [TensorProblem::Corrupt { name, .. }] if name == key),
            "a single {bad} among finite values must be refused, naming the tensor: {problems:?}"
        );
    }
}

#[test]
fn a_failed_save_keeps_the_good_adapter() {
    book("t04_save_load", "Atomic writes");
    let cfg = LoraConfig::new(2, 4.0, &["up_proj"]);
    let model = trained_model(6, &cfg);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(&model, &cfg, dir.path()).unwrap();
    let weights = std::fs::read(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    let config = std::fs::read(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap();
    // A config whose rank disagrees with the adapters, and a model without adapters: both fail.
    assert!(
        save_lora_weights(&model, &LoraConfig::new(3, 4.0, &["up_proj"]), dir.path()).is_err(),
        "saving adapters of rank 2 under a config with r = 3 must be an error"
    );
    assert!(save_lora_weights(&tiny(6), &cfg, dir.path()).is_err(), "a model without adapters has nothing to save");
    assert_eq!(
        std::fs::read(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap(),
        weights,
        "a failed save must not touch the saved weights"
    );
    assert_eq!(std::fs::read(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap(), config, "or the saved config");
    // Saving over an existing adapter replaces it.
    let other = trained_model(7, &cfg);
    save_lora_weights(&other, &cfg, dir.path()).unwrap();
    let mut fresh = tiny(6);
    load_lora_weights(&mut fresh, dir.path()).unwrap();
    assert_eq!(adapter_bits(&fresh), adapter_bits(&other), "a second save must replace the first");
}

#[test]
fn after_a_load_only_the_adapters_train() {
    book("t04_save_load", "Never half-load");
    let cfg = LoraConfig::new(2, 4.0, &["q_proj", "v_proj"]);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(&trained_model(3, &cfg), &cfg, dir.path()).unwrap();
    // A base that is trainable everywhere (as after full fine-tuning), with no adapter yet.
    let mut fresh = tiny(4);
    unfreeze_everything(&mut fresh);
    assert!(!all_trainable_vars(&fresh).is_empty());
    load_lora_weights(&mut fresh, dir.path()).unwrap();
    let mut trainable: Vec<String> = all_trainable_vars(&fresh).into_iter().map(|(n, _)| n).collect();
    trainable.sort();
    let mut adapters: Vec<String> = get_lora_parameters(&fresh).into_iter().map(|(n, _)| n).collect();
    adapters.sort();
    assert_eq!(adapters.len(), 8, "A and B of q and v in both layers");
    assert_eq!(trainable, adapters, "after a load the base is frozen whatever it was before; only A and B train");
}

#[test]
fn a_model_with_adapters_elsewhere_refuses_the_file() {
    book("t04_save_load", "Never half-load");
    let on_q = LoraConfig::new(2, 4.0, &["q_proj"]);
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(&trained_model(5, &on_q), &on_q, dir.path()).unwrap();
    // This model's adapters sit on v_proj: the file (q_proj) does not fit them.
    let mut model = trained_model(6, &LoraConfig::new(2, 4.0, &["v_proj"]));
    let before = adapter_bits(&model);
    let err = load_lora_weights(&mut model, dir.path()).expect_err("a file for other modules must not load");
    let problems = mismatch(err);
    assert!(
        problems.iter().any(|p| matches!(p, TensorProblem::Missing { name, .. } if name.contains("v_proj"))),
        "the model's own adapters (v_proj) are missing from the file: {problems:?}"
    );
    assert_eq!(adapter_bits(&model), before, "the model keeps its adapters, where they were");
}

#[test]
fn an_adapter_made_by_peft_gives_pefts_logits() {
    book("t04_save_load", "PEFT's keys");
    use lora_from_scratch::models::load::{load_model, LoadOptions};
    for model in ["tiny-llama", "tiny-gpt2"] {
        let dir = Path::new("tests/fixtures/peft").join(format!("{model}-from-peft"));
        let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &CPU).unwrap();
        let mut m = load_model(&format!("tests/fixtures/{model}"), &LoadOptions::default()).unwrap();
        load_lora_weights(m.model.as_mut(), &dir).unwrap();
        let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
        let ours = values(&m.model.forward(&ids, None, false).unwrap());
        assert_close!(
            ours,
            values(&reference["logits"]),
            1e-5,
            "{model}: an adapter saved by Python's PEFT must give PEFT's logits"
        );
    }
}
