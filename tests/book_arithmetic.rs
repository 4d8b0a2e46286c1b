//! The parameter arithmetic that the book's chapter "The idea and the math of LoRA" works out by
//! hand for GPT-2 (124M) and SmolLM2-135M, checked against what our models and `inject_lora`
//! actually count. The models are built at full size from zero weights (`common::shapes`; the
//! counts depend only on the shapes), so this needs neither the Hub nor the fetched model.

mod common;

use common::shapes::{gpt2_124m, smollm2_135m};
use lora_from_scratch::tasks::t03_inject::{count_parameters, get_lora_parameters, inject_lora};
use lora_from_scratch::{LoraConfig, LoraModel};

/// Inject into a copy of `model` and return (trainable, total) parameters.
fn with_lora<M: LoraModel + Clone>(model: &M, r: usize, targets: &[&str]) -> (usize, usize) {
    let mut m = model.clone();
    inject_lora(&mut m, &LoraConfig::new(r, 2.0 * r as f64, targets)).unwrap();
    let count = count_parameters(&m);
    let adapters: usize = get_lora_parameters(&m).iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(count.trainable, adapters, "after injection only the adapters train");
    (count.trainable, count.total)
}

#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (inject_lora, count_parameters); graded by tests/t*.rs"
)]
fn gpt2_counts_are_the_books() {
    let mut base = gpt2_124m();
    let total = count_parameters(&base).total;
    assert_eq!(total, 124_439_808, "GPT-2 124M");
    // train_gpt2's default: r = 16 on the fused c_attn, as PEFT adapts GPT-2.
    assert_eq!(with_lora(&base, 16, &["c_attn"]), (589_824, total + 589_824));
    // Every linear of the blocks at r = 8.
    assert_eq!(with_lora(&base, 8, &["all-linear"]).0, 1_179_648);
    // The paper's q and v only, as slices of c_attn.
    base.split_qkv().unwrap();
    assert_eq!(with_lora(&base, 8, &["c_attn.q", "c_attn.v"]).0, 294_912);
}

#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (inject_lora, count_parameters); graded by tests/t*.rs"
)]
fn smollm2_counts_are_the_books() {
    let base = smollm2_135m();
    let total = count_parameters(&base).total;
    assert_eq!(total, 134_515_008, "SmolLM2-135M");
    assert_eq!(with_lora(&base, 8, &["q_proj", "v_proj"]).0, 460_800);
    assert_eq!(with_lora(&base, 16, &["q_proj", "v_proj"]).0, 921_600);
    assert_eq!(with_lora(&base, 8, &["all-linear"]).0, 2_442_240);
}
