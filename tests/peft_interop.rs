//! Adapters travel between this crate and Hugging Face PEFT, both ways, on the tiny random GPT-2
//! (`c_attn` with PEFT's `fan_in_fan_out`, `mlp.c_proj`) and Llama (`q_proj`, `v_proj`,
//! `down_proj`). Fixtures: `cargo run --example interop_adapters` writes our adapters,
//! `scripts/make_fixtures.py` makes PEFT's and records PEFT's logits for both.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Tensor};
use common::{max_abs_diff, values, CPU};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::{load_lora_weights, save_lora_weights};

const MODELS: [&str; 2] = ["tiny-gpt2", "tiny-llama"];

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
        for key in ["peft_type", "r", "lora_alpha", "target_modules", "bias", "task_type"] {
            assert_eq!(saved[key], committed[key], "{model}: adapter_config.json `{key}` drifted");
        }
    }
}
