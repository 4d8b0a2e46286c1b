//! The seed's load-and-infer flow (`inference::adapter`, `examples/generate.rs --adapter`): a
//! fresh base with a saved adapter folder loaded, unmerged or merged, gives the greedy output of
//! the model the adapter was trained in.

mod common;

use std::path::Path;

use candle_core::DType;
use common::*;
use lora_from_scratch::inference::adapter::load_adapter_for_inference;
use lora_from_scratch::inference::generate::{generate, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t04_save_load::save_lora_weights;
use lora_from_scratch::LoraConfig;

#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 and 3 code (inject_lora, save, merge); graded by tests/t*.rs"
)]
fn a_loaded_adapter_generates_what_the_trained_model_generated() {
    for fixture in ["tiny-llama", "tiny-gpt2"] {
        let path = format!("tests/fixtures/{fixture}");
        let mut trained = load_model(&path, &LoadOptions::default()).unwrap();
        let config = LoraConfig::new(4, 8.0, &["all-linear"]);
        inject_lora(trained.model.as_mut(), &config).unwrap();
        // Adapters far from zero, so that they change what the model says.
        for (i, (_, v)) in get_lora_parameters(trained.model.as_ref()).into_iter().enumerate() {
            v.set(&(randn(&mut rng(70 + i as u64), v.dims(), DType::F32) * 0.3).unwrap()).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        save_lora_weights(trained.model.as_ref(), &config, dir.path()).unwrap();

        let opts = GenerateOptions { max_new_tokens: 12, sampling: Sampling::greedy(), stop_ids: vec![] };
        let prompt = [3u32, 14, 15, 9, 2, 6];
        let base = load_model(&path, &LoadOptions::default()).unwrap();
        let want = generate(trained.model.as_ref(), &prompt, &opts).unwrap().ids;
        assert_ne!(want, generate(base.model.as_ref(), &prompt, &opts).unwrap().ids, "{fixture}: the adapter matters");
        for merged in [false, true] {
            let mut fresh = load_model(&path, &LoadOptions::default()).unwrap();
            let loaded = load_adapter_for_inference(fresh.model.as_mut(), dir.path(), merged).unwrap();
            assert_eq!((loaded.r, loaded.alpha), (4, 8.0));
            let got = generate(fresh.model.as_ref(), &prompt, &opts).unwrap().ids;
            assert_eq!(got, want, "{fixture}, merged = {merged}");
            let adapters = fresh.model.linears().iter().filter(|(_, s)| s.adapter().is_some()).count();
            assert_eq!(adapters == 0, merged, "{fixture}: merged leaves no adapter, unmerged keeps them");
        }
    }
}

/// A folder Python's PEFT saved loads the same way, and gives PEFT's logits, merged or not.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 and 3 code (load, merge); graded by tests/t*.rs")]
fn an_adapter_peft_saved_gives_pefts_logits() {
    for model in ["tiny-llama", "tiny-gpt2"] {
        let dir = Path::new("tests/fixtures/peft").join(format!("{model}-from-peft"));
        let reference =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &candle_core::Device::Cpu).unwrap();
        let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
        for merged in [false, true] {
            let mut m = load_model(&format!("tests/fixtures/{model}"), &LoadOptions::default()).unwrap();
            load_adapter_for_inference(m.model.as_mut(), &dir, merged).unwrap();
            let diff =
                max_abs_diff(&values(&m.model.forward(&ids, None, false).unwrap()), &values(&reference["logits"]));
            assert!(diff < 1e-4, "{model}, merged = {merged}: {diff} from PEFT's logits");
        }
    }
}

#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (load_lora_weights); graded by tests/t*.rs")]
fn a_folder_without_an_adapter_is_named() {
    let mut m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let err = load_adapter_for_inference(m.model.as_mut(), Path::new("tests/fixtures/tiny-llama"), false).unwrap_err();
    assert!(err.to_string().contains("adapter_config.json"), "{err}");
}
