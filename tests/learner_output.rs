//! Snapshots (insta) of what a learner reads: the trainable-parameter line at GPT-2's and
//! SmolLM2's real shapes, `adapter_config.json` as written, the errors of the bad inputs a
//! learner meets first (an unknown target, a tensor of the wrong shape, a missing key), and the
//! progress command's table and next-task block. A change to any of them fails here until the
//! new text is reviewed (`cargo insta review`, or accept the `.snap.new` file).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use common::CPU;
use lora_from_scratch::models::gpt2::{Gpt2, Gpt2Config};
use lora_from_scratch::models::llama::{Llama, LlamaConfig};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::models::weights::Weights;
use lora_from_scratch::tasks::lang::Lang;
use lora_from_scratch::tasks::progress::{describe, table, words};
use lora_from_scratch::LoraConfig;

/// A weight of `shape` that takes no memory: one zero broadcast. Parameter counts need only
/// the shapes, so a real-sized model is built without its weights.
fn zeros(shape: &[usize]) -> Tensor {
    Tensor::zeros((), DType::F32, &CPU).unwrap().broadcast_as(shape).unwrap()
}

fn weights(tensors: Vec<(String, Vec<usize>)>) -> Weights {
    let map: HashMap<String, Tensor> = tensors.into_iter().map(|(n, s)| (n, zeros(&s))).collect();
    Weights::from_tensors(map, Path::new("(shapes only)"), DType::F32).unwrap()
}

/// GPT-2 124M (`openai-community/gpt2`): 12 blocks of 768, Conv1D weights [in, out].
fn gpt2_shaped() -> Gpt2 {
    let config: Gpt2Config = serde_json::from_str(
        r#"{"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "eos_token_id": 50256}"#,
    )
    .unwrap();
    let d = 768;
    let mut t =
        vec![("transformer.wte.weight".into(), vec![50257, d]), ("transformer.wpe.weight".into(), vec![1024, d])];
    for i in 0..12 {
        let p = format!("transformer.h.{i}");
        for (name, inp, out) in
            [("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d), ("mlp.c_fc", d, 4 * d), ("mlp.c_proj", 4 * d, d)]
        {
            t.push((format!("{p}.{name}.weight"), vec![inp, out]));
            t.push((format!("{p}.{name}.bias"), vec![out]));
        }
        for ln in ["ln_1", "ln_2"] {
            t.push((format!("{p}.{ln}.weight"), vec![d]));
            t.push((format!("{p}.{ln}.bias"), vec![d]));
        }
    }
    t.push(("transformer.ln_f.weight".into(), vec![d]));
    t.push(("transformer.ln_f.bias".into(), vec![d]));
    Gpt2::new(config, &weights(t), "gpt2 (shapes only)").unwrap()
}

/// SmolLM2-135M (`scripts/smollm2-135m-config.json`, its config as transformers writes it).
fn smollm2_shaped() -> Llama {
    let config: LlamaConfig =
        serde_json::from_str(&std::fs::read_to_string("scripts/smollm2-135m-config.json").unwrap()).unwrap();
    let (d, inter, hd) = (config.hidden_size, config.intermediate_size, config.head_dim());
    let (q, kv) = (config.num_attention_heads * hd, config.kv_heads() * hd);
    let mut t =
        vec![("model.embed_tokens.weight".into(), vec![config.vocab_size, d]), ("model.norm.weight".into(), vec![d])];
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        for (name, out, inp) in [
            ("self_attn.q_proj", q, d),
            ("self_attn.k_proj", kv, d),
            ("self_attn.v_proj", kv, d),
            ("self_attn.o_proj", d, q),
            ("mlp.gate_proj", inter, d),
            ("mlp.up_proj", inter, d),
            ("mlp.down_proj", d, inter),
        ] {
            t.push((format!("{p}.{name}.weight"), vec![out, inp]));
        }
        t.push((format!("{p}.input_layernorm.weight"), vec![d]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
    }
    Llama::new(config, &weights(t), "SmolLM2-135M (shapes only)").unwrap()
}

/// The line `print_trainable_parameters` prints for the runs the book does: train_gpt2's
/// defaults (GPT-2 `c_attn` r 16; SmolLM2 q, v r 16) and the E2E run (q, v r 8), and all-linear.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (inject_lora); graded by tests/t03_inject.rs")]
fn trainable_parameters_at_real_shapes() {
    use lora_from_scratch::tasks::t03_inject::{inject_lora, print_trainable_parameters};
    let mut lines = Vec::new();
    for (targets, r) in [(vec!["c_attn"], 16), (vec!["all-linear"], 8)] {
        let mut m = gpt2_shaped();
        inject_lora(&mut m, &LoraConfig::new(r, 2.0 * r as f64, &targets)).unwrap();
        lines.push(format!("GPT-2 {targets:?} r {r}: {}", print_trainable_parameters(&m)));
    }
    for (targets, r) in [(vec!["q_proj", "v_proj"], 16), (vec!["q_proj", "v_proj"], 8), (vec!["all-linear"], 8)] {
        let mut m = smollm2_shaped();
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
