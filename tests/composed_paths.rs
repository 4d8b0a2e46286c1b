//! The composed ops (what a GPU or a bf16 model runs: candle ops with candle's backward) against
//! the fused CPU ops, through whole models: the fused ops switched off for the process
//! (`compute::fused::set_enabled(false)`), the same LoRA training step on the CPU must give the
//! same loss, the same adapter gradients and the same AdamW update. This covers every fallback at
//! once: norms, RoPE, attention, SwiGLU and gelu, the LoRA and residual linears, the head + loss,
//! and AdamW. One test in its own binary, because the switch is process-wide.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use lora_from_scratch::compute::fused;
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t05_data::{collate, tokenize_example};
use lora_from_scratch::tasks::t06_train::causal_lm_loss;
use lora_from_scratch::train::optim::{AdamW, AdamWParams};
use lora_from_scratch::LoraConfig;

/// What one training step gives: the loss, every adapter's gradient, and every adapter after
/// one AdamW step (with weight decay, so the decay path runs too).
struct Step {
    loss: f64,
    grads: Vec<(String, Vec<f64>)>,
    after: Vec<(String, Vec<f64>)>,
    fused_in_use: bool,
}

const LR: f64 = 1e-2;

fn step(fixture: &str) -> Step {
    let mut m = load_model(&format!("tests/fixtures/{fixture}"), &LoadOptions::default()).unwrap();
    inject_lora(m.model.as_mut(), &LoraConfig::new(4, 8.0, &["all-linear"])).unwrap();
    // B away from zero, so every adapter gets a gradient and the update reaches the output.
    for (i, (_, v)) in get_lora_parameters(m.model.as_ref()).into_iter().enumerate() {
        v.set(&(randn(&mut rng(30 + i as u64), v.dims(), DType::F32) * 0.05).unwrap()).unwrap();
    }
    let examples: Vec<_> = (0..3u32)
        .map(|k| tokenize_example(&[3 + k, 9, 27, 14 + k], &[40 + k, 41, 7 + 2 * k], 2, 64).unwrap())
        .collect();
    let batch = collate(&examples, 0, &common::CPU).unwrap();
    let (loss, _) = causal_lm_loss(m.model.as_ref(), &batch, true).unwrap();
    let vars = get_lora_parameters(m.model.as_ref());
    let grads = loss.backward().unwrap();
    let read = |vars: &[(String, candle_core::Var)]| -> Vec<(String, Vec<f64>)> {
        vars.iter().map(|(n, v)| (n.clone(), values(v.as_tensor()))).collect()
    };
    let g: Vec<(String, Vec<f64>)> =
        vars.iter().map(|(n, v)| (n.clone(), values(grads.get(v.as_tensor()).expect("a gradient")))).collect();
    let mut opt = AdamW::new(vars.clone(), AdamWParams { lr: LR, weight_decay: 1.0, ..Default::default() }).unwrap();
    opt.step(&grads).unwrap();
    let probe = Tensor::zeros(2, DType::F32, &common::CPU).unwrap();
    Step {
        loss: f64::from(loss.to_scalar::<f32>().unwrap()),
        grads: g,
        after: read(&vars),
        fused_in_use: fused::usable(&[&probe]),
    }
}

fn close(a: &[(String, Vec<f64>)], b: &[(String, Vec<f64>)], rel: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let scale = y.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
        let d = max_abs_diff(x, y);
        assert!(d <= rel * scale, "{name}: the composed {what} is {d} away from the fused one (scale {scale})");
    }
}

#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task code (inject_lora, causal_lm_loss); graded by tests/t0*.rs")]
fn the_composed_ops_train_as_the_fused_ones_do() {
    for fixture in ["tiny-llama", "tiny-gpt2", "tiny-qwen2", "tiny-mistral"] {
        fused::set_enabled(true);
        let fast = step(fixture);
        fused::set_enabled(false);
        let composed = step(fixture);
        fused::set_enabled(true);
        assert!(fast.fused_in_use && !composed.fused_in_use, "the switch must reach the ops");
        assert!(
            (fast.loss - composed.loss).abs() < 1e-5 * fast.loss.abs(),
            "{fixture}: loss {} vs {}",
            composed.loss,
            fast.loss
        );
        close(&composed.grads, &fast.grads, 1e-4, "gradient");
        // Adam divides by |g| + eps: where a gradient is near zero, its rounding moves the step
        // by a share of lr. The decay (lr * wd * w, about 5e-4 here) and the step (about lr)
        // are far above this bound.
        for ((name, x), (_, y)) in composed.after.iter().zip(&fast.after) {
            let d = max_abs_diff(x, y);
            assert!(d < 1e-2 * LR, "{name}: after one AdamW step the composed path is {d} away from the fused one");
        }
    }
}
