//! Snapshots (insta) of what a learner reads: the trainable-parameter line at GPT-2's and
//! SmolLM2's real shapes, `adapter_config.json` as written, the errors of the bad inputs a
//! learner meets first (an unknown target, a tensor of the wrong shape, a missing key), and the
//! progress command's table and next-task block. A change to any of them fails here until the
//! new text is reviewed (`cargo insta review`, or accept the `.snap.new` file).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Tensor};
use common::shapes::{gpt2_124m, smollm2_135m};
use common::CPU;
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::tasks::lang::Lang;
use lora_from_scratch::tasks::progress::{describe, table, words};
use lora_from_scratch::LoraConfig;

/// The line `print_trainable_parameters` prints for the runs the book does: train_gpt2's
/// defaults (GPT-2 `c_attn` r 16; SmolLM2 q, v r 16) and the E2E run (q, v r 8), and all-linear.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (inject_lora); graded by tests/t03_inject.rs")]
fn trainable_parameters_at_real_shapes() {
    use lora_from_scratch::tasks::t03_inject::{inject_lora, print_trainable_parameters};
    let mut lines = Vec::new();
    for (targets, r) in [(vec!["c_attn"], 16), (vec!["all-linear"], 8)] {
        let mut m = gpt2_124m();
        inject_lora(&mut m, &LoraConfig::new(r, 2.0 * r as f64, &targets)).unwrap();
        lines.push(format!("GPT-2 {targets:?} r {r}: {}", print_trainable_parameters(&m)));
    }
    for (targets, r) in [(vec!["q_proj", "v_proj"], 16), (vec!["q_proj", "v_proj"], 8), (vec!["all-linear"], 8)] {
        let mut m = smollm2_135m();
        inject_lora(&mut m, &LoraConfig::new(r, 2.0 * r as f64, &targets)).unwrap();
        lines.push(format!("SmolLM2-135M {targets:?} r {r}: {}", print_trainable_parameters(&m)));
    }
    insta::assert_snapshot!("trainable_parameters_real_shapes", lines.join("\n"));
}

/// `adapter_config.json` exactly as `save_lora_weights` writes it, for GPT-2 (fused `c_attn`,
/// `fan_in_fan_out`) and Llama (q, v), both tiny fixtures.
#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (save_lora_weights); graded by tests/t04_save_load.rs"
)]
fn adapter_config_as_written() {
    use lora_from_scratch::tasks::t03_inject::inject_lora;
    use lora_from_scratch::tasks::t04_save_load::save_lora_weights;
    for (fixture, targets) in [("tiny-gpt2", vec!["c_attn"]), ("tiny-llama", vec!["q_proj", "v_proj"])] {
        let mut m = load_model(&format!("tests/fixtures/{fixture}"), &LoadOptions::default()).unwrap();
        let cfg = LoraConfig::new(4, 8.0, &targets);
        inject_lora(m.model.as_mut(), &cfg).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_lora_weights(m.model.as_ref(), &cfg, dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
        insta::assert_snapshot!(format!("adapter_config_{fixture}"), text);
    }
}

/// The errors a learner meets first, as they read: a target that matches nothing, an adapter
/// tensor of the wrong shape, an adapter file missing a key. (Temporary folders are written as
/// `[DIR]`.)
#[test]
#[cfg_attr(
    feature = "exercises",
    ignore = "runs the task 1 code (inject_lora, load_lora_weights); graded by tests/t0*.rs"
)]
fn bad_input_errors_read_as_expected() {
    use lora_from_scratch::tasks::t03_inject::inject_lora;
    use lora_from_scratch::tasks::t04_save_load::{load_lora_weights, save_lora_weights};
    let load = || load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let mut m = load();
    let unknown = inject_lora(m.model.as_mut(), &LoraConfig::new(4, 8.0, &["q_prj"])).unwrap_err().to_string();

    let cfg = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    let mut m = load();
    inject_lora(m.model.as_mut(), &cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_lora_weights(m.model.as_ref(), &cfg, dir.path()).unwrap();
    let file = dir.path().join("adapter_model.safetensors");
    let saved = candle_core::safetensors::load(&file, &CPU).unwrap();
    let key_a = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight";
    let key_b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    assert!(saved.contains_key(key_a) && saved.contains_key(key_b), "{:?}", saved.keys());
    let edited = |edit: &dyn Fn(&mut HashMap<String, Tensor>)| {
        let mut t = saved.clone();
        edit(&mut t);
        candle_core::safetensors::save(&t, &file).unwrap();
        let mut fresh = load();
        let err = load_lora_weights(fresh.model.as_mut(), dir.path()).unwrap_err().to_string();
        err.replace(dir.path().to_str().unwrap(), "[DIR]")
    };
    let wrong_shape = edited(&|t| {
        t.insert(key_a.into(), Tensor::zeros((4, 31), DType::F32, &CPU).unwrap());
    });
    let missing = edited(&|t| {
        t.remove(key_b);
    });
    insta::assert_snapshot!(
        "bad_input_errors",
        format!("unknown target:\n{unknown}\n\nwrong shape:\n{wrong_shape}\n\nmissing key:\n{missing}")
    );
}

/// The progress command's table and next-task block, in both languages, for a learner who has
/// done t01 and t02 and is half-way through t03 (the other tasks' graders still fail on stubs).
#[test]
fn progress_table_reads_as_expected() {
    let mut results = vec![(6, 6), (5, 5), (4, 9)];
    results.extend(std::iter::repeat_n((0, 7), 8));
    let t03 = &lora_from_scratch::tasks::manifest::TASKS[2];
    for lang in [Lang::En, Lang::Zh] {
        let text = format!(
            "{}\n{}\n{}",
            table(&results, lang),
            describe(t03, words(lang).next, 1, false, lang, Lang::En),
            describe(t03, words(lang).hints_for, 2, true, lang, Lang::En)
        );
        insta::assert_snapshot!(format!("progress_{}", lang.code()), text);
    }
}
