//! Settings that cannot be right are refused right after the model loads, before any generation
//! or training, naming the setting, the layer and the limit (`train::settings`; the command-line
//! rules themselves are unit tests there).

use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::train::settings::{check_adapter_fits, check_length_fits};
use lora_from_scratch::{LoraConfig, LoraError};

#[test]
#[cfg_attr(feature = "exercises", ignore = "runs t03's find_target_modules")]
fn a_rank_a_target_or_a_length_that_cannot_fit_the_model_is_named() {
    let m = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let (model, limit) = (m.model.as_ref(), m.model.max_positions());
    let q_v = |r: usize| LoraConfig::new(r, 16.0, &["q_proj", "v_proj"]);
    check_adapter_fits(model, &q_v(8)).unwrap();
    check_length_fits(64, limit).unwrap();

    // The tiny Llama's q_proj is 32 -> 32, its v_proj 32 -> 16 (two key/value heads of 8):
    // rank 24 fits q, not v.
    let msg = check_adapter_fits(model, &q_v(24)).unwrap_err().to_string();
    assert!(msg.starts_with("rank: 24 is larger than min(in, out) of 2 targeted layers"), "{msg}");
    assert!(msg.contains("self_attn.v_proj` (32 -> 16)") && msg.contains("choose r <= 16"), "{msg}");

    let typo = LoraConfig::new(8, 16.0, &["q_prj"]);
    assert!(matches!(check_adapter_fits(model, &typo), Err(LoraError::UnknownTarget { .. })));

    let msg = check_length_fits(65, limit).unwrap_err().to_string();
    assert!(msg.contains("--max-len") && msg.contains("65") && msg.contains("64 positions"), "{msg}");

    let zero_alpha = LoraConfig::new(8, 0.0, &["q_proj"]);
    assert!(check_adapter_fits(model, &zero_alpha).unwrap_err().to_string().starts_with("alpha"));
}
