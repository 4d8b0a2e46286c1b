//! Adapters travel between this crate and Hugging Face PEFT, both ways, on the tiny random GPT-2
//! (`c_attn` with PEFT's `fan_in_fan_out`, `mlp.c_proj`), Llama (`q_proj`, `v_proj`,
//! `down_proj`), Qwen2 (its biased `q_proj`, `k_proj`, `v_proj`, and `o_proj`, `down_proj`) and
//! Mistral (`q_proj`, `v_proj`, `gate_proj`, under its sliding window). Fixtures: `cargo run --example interop_adapters` writes our adapters,
//! `scripts/make_fixtures.py` makes PEFT's and records PEFT's logits for both.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Tensor};
use common::{max_abs_diff, values, CPU};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::tasks::t04_save_load::{load_lora_weights, save_lora_weights};

const MODELS: [&str; 4] = ["tiny-gpt2", "tiny-llama", "tiny-qwen2", "tiny-mistral"];

fn fixture(path: &str, file: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(Path::new("tests/fixtures/peft").join(path).join(file), &CPU).unwrap()
}

/// Our logits with the adapter in `tests/fixtures/peft/<dir>` loaded, for the fixture's ids.
fn our_logits(model: &str, dir: &str, ids: &Tensor) -> Vec<f64> {
    let mut m = load_model(&format!("tests/fixtures/{model}"), &LoadOptions::default()).unwrap();
    load_lora_weights(m.model.as_mut(), &Path::new("tests/fixtures/peft").join(dir)).unwrap();
    values(&m.model.forward(&ids.to_dtype(DType::U32).unwrap(), None, false).unwrap())
}

#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (load_lora_weights); graded by tests/t04_save_load.rs"
)]
fn an_adapter_made_by_peft_gives_peft_logits_here() {
    for model in MODELS {
        let dir = format!("{model}-from-peft");
        let r = fixture(&dir, "reference.safetensors");
        let diff = max_abs_diff(&our_logits(model, &dir, &r["input_ids"]), &values(&r["logits"]));
        assert!(diff < 1e-5, "{model}: PEFT's adapter gives logits {diff} away from PEFT's");
    }
}

#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (load_lora_weights); graded by tests/t04_save_load.rs"
)]
fn an_adapter_saved_here_gives_our_logits_in_peft() {
    for model in MODELS {
        let dir = format!("{model}-from-rust");
        let r = fixture(&dir, "peft_logits.safetensors");
        let diff = max_abs_diff(&our_logits(model, &dir, &r["input_ids"]), &values(&r["logits"]));
        assert!(diff < 1e-5, "{model}: PEFT reads our adapter as logits {diff} away from ours");
    }
}

/// What we save now has exactly the keys and shapes of what PEFT saves for the same targets, and
/// re-saving the committed adapter gives the same tensors (the format has not drifted since
/// PEFT read it).
#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (save/load_lora_weights); graded by tests/t04_save_load.rs"
)]
fn our_files_have_peft_keys_and_do_not_drift() {
    for model in MODELS {
        let ours = fixture(&format!("{model}-from-rust"), "adapter_model.safetensors");
        let peft = fixture(&format!("{model}-from-peft"), "adapter_model.safetensors");
        let shapes = |m: &std::collections::HashMap<String, Tensor>| -> BTreeSet<(String, Vec<usize>)> {
            m.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect()
        };
        assert_eq!(shapes(&ours), shapes(&peft), "{model}: keys or shapes differ from PEFT's");

        let mut m = load_model(&format!("tests/fixtures/{model}"), &LoadOptions::default()).unwrap();
        let dir = Path::new("tests/fixtures/peft").join(format!("{model}-from-rust"));
        let cfg = load_lora_weights(m.model.as_mut(), &dir).unwrap();
        let out = tempfile::tempdir().unwrap();
        save_lora_weights(m.model.as_ref(), &cfg, out.path()).unwrap();
        let again = candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &CPU).unwrap();
        for (k, t) in &ours {
            assert_eq!(values(t), values(&again[k]), "{model}: {k} changed on a save round trip");
        }
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap()).unwrap();
        let committed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
        for key in ["peft_type", "r", "lora_alpha", "target_modules", "bias", "task_type", "fan_in_fan_out"] {
            assert_eq!(saved[key], committed[key], "{model}: adapter_config.json `{key}` drifted");
        }
    }
}

/// Adapters on GPT-2's q and v slices alone (loralib's `MergedLinear`) travel to PEFT as one
/// ordinary `c_attn` adapter by the block construction, and PEFT's logits equal ours.
#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (load_lora_weights); graded by tests/t04_save_load.rs"
)]
fn gpt2_slice_adapters_export_exactly_to_peft() {
    let r = fixture("tiny-gpt2-split-from-rust", "peft_logits.safetensors");
    let opts = LoadOptions { split_qkv: true, ..Default::default() };
    let mut m = load_model("tests/fixtures/tiny-gpt2", &opts).unwrap();
    load_lora_weights(m.model.as_mut(), Path::new("tests/fixtures/peft/tiny-gpt2-split-ours")).unwrap();
    let ours = values(&m.model.forward(&r["input_ids"].to_dtype(DType::U32).unwrap(), None, false).unwrap());
    let diff = max_abs_diff(&ours, &values(&r["logits"]));
    assert!(diff < 1e-5, "PEFT's logits for the exported slice adapters are {diff} away from ours");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/peft/tiny-gpt2-split-from-rust/adapter_config.json").unwrap(),
    )
    .unwrap();
    assert_eq!((cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()), (Some(8), Some(16.0)), "2 slices: r and alpha doubled");
    assert_eq!(cfg["fan_in_fan_out"], true, "GPT-2's Conv1D layout is declared");
    // And exporting the same adapters now gives the committed tensors.
    let out = tempfile::tempdir().unwrap();
    let lora = lora_from_scratch::LoraConfig::new(4, 8.0, &["c_attn.q", "c_attn.v"]);
    lora_from_scratch::inference::export::save_peft_adapter(m.model.as_ref(), &lora, out.path()).unwrap();
    let again = candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &CPU).unwrap();
    for (k, t) in fixture("tiny-gpt2-split-from-rust", "adapter_model.safetensors") {
        assert_eq!(values(&t), values(&again[&k]), "{k} differs from the committed export");
    }
}

/// A merged model saved as a Hugging Face folder: transformers' logits for it equal our adapted
/// model's, and our loader reads it back to the same logits.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 and 3 code; graded by tests/t0*.rs")]
fn merged_checkpoints_load_in_transformers_and_here() {
    for model in MODELS {
        let merged_dir = format!("tests/fixtures/merged/{model}");
        let r = candle_core::safetensors::load(format!("{merged_dir}/transformers_logits.safetensors"), &CPU).unwrap();
        let ids = r["input_ids"].to_dtype(DType::U32).unwrap();
        let mut adapted = load_model(&format!("tests/fixtures/{model}"), &LoadOptions::default()).unwrap();
        load_lora_weights(adapted.model.as_mut(), Path::new(&format!("tests/fixtures/merged/{model}-adapter")))
            .unwrap();
        let adapted_logits = values(&adapted.model.forward(&ids, None, false).unwrap());
        let diff = max_abs_diff(&adapted_logits, &values(&r["logits"]));
        assert!(diff < 1e-5, "{model}: transformers' logits for our merged export are {diff} from the adapted model's");
        let reloaded = load_model(&merged_dir, &LoadOptions::default()).unwrap();
        let diff = max_abs_diff(&adapted_logits, &values(&reloaded.model.forward(&ids, None, false).unwrap()));
        assert!(diff < 1e-5, "{model}: our loader reads the merged export {diff} away");
        // Exporting the in-memory merged model now writes the committed tensors.
        lora_from_scratch::tasks::t08_merge::merge_lora_weights(adapted.model.as_mut()).unwrap();
        let out = tempfile::tempdir().unwrap();
        lora_from_scratch::inference::export::save_pretrained(adapted.model.as_ref(), None, out.path()).unwrap();
        let mine = candle_core::safetensors::load(out.path().join("model.safetensors"), &CPU).unwrap();
        let committed = candle_core::safetensors::load(format!("{merged_dir}/model.safetensors"), &CPU).unwrap();
        assert_eq!(mine.len(), committed.len(), "{model}: tensor count (tied weights once)");
        for (k, t) in committed {
            assert!(
                max_abs_diff(&values(&t), &values(&mine[&k])) < 1e-6,
                "{model}: {k} differs from the committed export"
            );
        }
    }
}

#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (load_lora_weights); graded by tests/t04_save_load.rs"
)]
fn exporting_a_model_that_still_has_adapters_is_an_error() {
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    load_lora_weights(m.model.as_mut(), Path::new("tests/fixtures/merged/tiny-llama-adapter")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = lora_from_scratch::inference::export::save_pretrained(m.model.as_ref(), None, out.path()).unwrap_err();
    assert!(err.to_string().contains("merge"), "{err}");
}
