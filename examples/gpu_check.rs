//! The checks that need a GPU, as one binary that `scripts/gpu-check.sh` carries to a CUDA
//! machine (the test suite runs on the CPU; CI has no GPU). Each check prints one JSON line;
//! the exit code is 1 if any failed.
//!
//! ```text
//! scripts/build-cuda.sh --example gpu_check      # here, against PyPI's CUDA wheels
//! target/cuda/release/examples/gpu_check --fixtures tests/fixtures   # on the GPU machine
//! ```
//!
//! 1. **golden logits**: the tiny Llama and GPT-2 checkpoints (made by transformers, with its
//!    logits and greedy ids; `scripts/make_fixtures.py`) on the GPU give transformers' logits
//!    to 1e-4 and its greedy continuation.
//! 2. **gradients**: every op of a training forward pass (`compute::ops`) on the GPU, in f64:
//!    the gradient of each input against central finite differences, and value and gradients
//!    against the same op on the CPU.
//! 3. **a training step**: LoRA on the tiny Llama, the loss and every adapter gradient on the
//!    GPU equal the CPU's (f32, 1e-4 relative to their scale); with a bf16 base, within bf16's
//!    precision of the f32 one.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use lora_from_scratch::compute::ops;
use lora_from_scratch::inference::generate::{generate, GenerateOptions, Sampling};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t05_data::Batch;
use lora_from_scratch::tasks::t06_train::causal_lm_loss;
use lora_from_scratch::LoraConfig;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "The checks that need a CUDA GPU: golden logits, gradients, a training step")]
struct Args {
    /// The folder holding tiny-llama/ and tiny-gpt2/ (the repository's tests/fixtures).
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    /// Run on the CPU against the CPU (a rehearsal where no GPU is present).
    #[arg(long)]
    cpu: bool,
}

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

/// Print one check's JSON line; false if it failed.
fn report(check: &str, result: Result<serde_json::Value>) -> bool {
    match result {
        Ok(detail) => {
            println!("{}", json!({ "check": check, "ok": true, "detail": detail }));
            true
        }
        Err(e) => {
            println!("{}", json!({ "check": check, "ok": false, "error": format!("{e:#}") }));
            false
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let gpu = if args.cpu {
        Device::Cpu
    } else if candle_core::utils::cuda_is_available() {
        Device::new_cuda(0).context("opening CUDA device 0")?
    } else {
        bail!("no CUDA device: this binary was built without `--features cuda`, or the driver found no GPU (--cpu rehearses on the CPU)");
    };
    println!("{}", json!({ "check": "device", "ok": true, "detail": format!("{gpu:?}") }));
    let mut ok = true;
    for name in ["tiny-llama", "tiny-gpt2"] {
        ok &= report(&format!("golden logits {name}"), golden(&args.fixtures.join(name), &gpu));
    }
    for (name, result) in gradient_checks(&gpu) {
        ok &= report(&format!("gradient {name}"), result);
    }
    ok &= report("training step f32", training_step(&args.fixtures.join("tiny-llama"), &gpu));
    ok &= report("training step bf16 base", bf16_step(&args.fixtures.join("tiny-llama"), &gpu));
    if !ok {
        bail!("some GPU checks failed (the lines with \"ok\": false)");
    }
    Ok(())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?;
    Ok((a - b)?.abs()?.max(0)?.to_scalar::<f64>()?)
}

fn max_abs(a: &Tensor) -> Result<f64> {
    Ok(a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.abs()?.max(0)?.to_scalar::<f64>()?)
}

/// transformers' logits (1e-4) and greedy ids for a tiny checkpoint, run on `device`.
fn golden(dir: &std::path::Path, device: &Device) -> Result<serde_json::Value> {
    let m = load_model(
        dir.to_str().context("fixture path")?,
        &LoadOptions { device: device.clone(), ..Default::default() },
    )?;
    let r = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let ids = r["input_ids"].to_dtype(DType::U32)?;
    let logits = m.model.forward(&ids.to_device(device)?, None, false)?;
    let diff = max_abs_diff(&logits, &r["logits"])?;
    if diff >= 1e-4 {
        bail!("logits differ from transformers' by {diff}");
    }
    let prompt: Vec<u32> = ids.get(0)?.to_vec1()?;
    let expected: Vec<u32> = r["greedy_ids"].to_dtype(DType::U32)?.to_vec1()?;
    let opts = GenerateOptions { max_new_tokens: expected.len(), sampling: Sampling::greedy(), stop_ids: vec![] };
    let got = generate(m.model.as_ref(), &prompt, &opts)?.ids;
    if got != expected {
        bail!("greedy ids {got:?}, transformers' {expected:?}");
    }
    Ok(json!({ "max_abs_diff": diff, "greedy_ids": got.len() }))
}

type OpFn = Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>>;

/// Seeded values in [-1, 1) of `shape`, f64, on `device`.
fn values(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// Every training op with its inputs' shapes: (name, shapes, op).
fn ops_under_test() -> Vec<(&'static str, Vec<Vec<usize>>, OpFn)> {
    let map = |r: lora_from_scratch::Result<Tensor>| r.map_err(|e| candle_core::Error::Msg(e.to_string()));
    vec![
        ("rms_norm", vec![vec![3, 8], vec![8]], Box::new(move |t| map(ops::rms_norm(&t[0], &t[1], 1e-5)))),
        (
            "layer_norm",
            vec![vec![3, 8], vec![8], vec![8]],
            Box::new(move |t| map(ops::layer_norm(&t[0], &t[1], &t[2], 1e-5))),
        ),
        ("swiglu", vec![vec![4, 6], vec![4, 6]], Box::new(move |t| map(ops::swiglu(&t[0], &t[1])))),
        ("gelu_new", vec![vec![4, 6]], Box::new(move |t| map(ops::gelu_new(&t[0])))),
        (
            "linear",
            vec![vec![2, 3, 5], vec![4, 5], vec![4]],
            Box::new(move |t| map(ops::linear_forward(&t[0], &t[1], Some(&t[2])))),
        ),
        (
            "self_attention (GQA, RoPE)",
            vec![vec![2, 5, 8], vec![2, 5, 4], vec![2, 5, 4]],
            Box::new(move |t| {
                let pos: Vec<f64> = (0..5).flat_map(|p| (0..2).map(move |i| p as f64 / 10f64.powi(i))).collect();
                let freqs = Tensor::from_vec(pos, (5, 2), t[0].device())?;
                let (cos, sin) = (freqs.cos()?, freqs.sin()?);
                map(ops::self_attention(&t[0], &t[1], &t[2], 2, 1, Some((&cos, &sin)), None))
            }),
        ),
        (
            "head_cross_entropy",
            vec![vec![6, 4], vec![9, 4]],
            Box::new(move |t| map(ops::head_cross_entropy(&t[0], &t[1], &[0, 3, 8, 1, 1, 5]))),
        ),
    ]
}

/// For every op: the GPU's gradient of each input against central differences on the GPU, and
/// the GPU's value and gradients against the CPU's (f64).
fn gradient_checks(gpu: &Device) -> Vec<(&'static str, Result<serde_json::Value>)> {
    ops_under_test().into_iter().map(|(name, shapes, op)| (name, check_op(&shapes, &op, gpu))).collect()
}

fn check_op(shapes: &[Vec<usize>], op: &OpFn, gpu: &Device) -> Result<serde_json::Value> {
    let inputs: Vec<Vec<Tensor>> = [gpu, &Device::Cpu]
        .iter()
        .map(|d| shapes.iter().enumerate().map(|(i, s)| values(i as u64 + 1, s, d)).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    // A fixed weighting, so every output element's gradient counts.
    let weigh = |y: &Tensor| -> Result<Tensor> {
        let r = values(99, y.dims(), y.device())?;
        Ok((y * r)?.sum_all()?)
    };
    let mut grads = Vec::new();
    let mut value = Vec::new();
    for ins in &inputs {
        let vars: Vec<Var> = ins.iter().map(Var::from_tensor).collect::<candle_core::Result<_>>()?;
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = op(&ts)?;
        let g = weigh(&y)?.backward()?;
        grads.push(vars.iter().map(|v| g.get(v.as_tensor()).cloned()).collect::<Vec<_>>());
        value.push(y);
    }
    let value_diff = max_abs_diff(&value[0], &value[1])?;
    if value_diff > 1e-10 * (1.0 + max_abs(&value[1])?) {
        bail!("the GPU's value is {value_diff} from the CPU's");
    }
    let mut worst_fd = 0f64;
    for (i, (g_gpu, g_cpu)) in grads[0].iter().zip(&grads[1]).enumerate() {
        let (Some(g_gpu), Some(g_cpu)) = (g_gpu, g_cpu) else { bail!("input {i}: no gradient on one device") };
        let d = max_abs_diff(g_gpu, g_cpu)?;
        if d > 1e-9 * (1.0 + max_abs(g_cpu)?) {
            bail!("input {i}: the GPU's gradient is {d} from the CPU's");
        }
        // Central differences on the GPU, at a few elements.
        let base: Vec<f64> = inputs[0][i].flatten_all()?.to_vec1()?;
        let analytic: Vec<f64> = g_gpu.flatten_all()?.to_vec1()?;
        for e in (0..base.len()).step_by((base.len() / 6).max(1)) {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[e] += delta;
                let mut ins = inputs[0].clone();
                ins[i] = Tensor::from_vec(v, inputs[0][i].dims(), gpu)?;
                Ok(weigh(&op(&ins)?)?.to_scalar::<f64>()?)
            };
            let eps = 1e-6;
            let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
            let err = (numeric - analytic[e]).abs();
            if err > 1e-6 + 1e-5 * numeric.abs().max(analytic[e].abs()) {
                bail!("input {i}, element {e}: backprop {}, finite differences {numeric}", analytic[e]);
            }
            worst_fd = worst_fd.max(err);
        }
    }
    Ok(json!({ "value_vs_cpu": value_diff, "worst_finite_difference_error": worst_fd }))
}

/// The loss and the adapters' gradients of one LoRA step on the tiny Llama, on `device`, with
/// the base in `dtype`.
fn step(dir: &std::path::Path, device: &Device, dtype: DType) -> Result<(f64, Vec<(String, Tensor)>)> {
    let opts = LoadOptions { device: device.clone(), dtype, ..Default::default() };
    let mut m = load_model(dir.to_str().context("fixture path")?, &opts)?;
    inject_lora(m.model.as_mut(), &LoraConfig::new(2, 4.0, &["q_proj", "v_proj", "down_proj"]))?;
    let params = get_lora_parameters(m.model.as_ref());
    for (i, (_, v)) in params.iter().enumerate() {
        // B starts at zero; seeded values make every gradient non-trivial and equal across devices.
        v.set(&(values(50 + i as u64, v.dims(), device)?.to_dtype(DType::F32)? * 0.3)?)?;
    }
    let ids: Vec<u32> = (0..2 * 7).map(|i| (i * 37 + 11) % 101).collect();
    let ids = Tensor::from_vec(ids, (2, 7), device)?;
    let batch = Batch { input_ids: ids.clone(), labels: ids.to_dtype(DType::I64)?, attention_mask: ids.ones_like()? };
    let (loss, _) = causal_lm_loss(m.model.as_ref(), &batch, true)?;
    let grads = loss.backward()?;
    let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let g = params
        .iter()
        .map(|(n, v)| Ok((n.clone(), grads.get(v.as_tensor()).context(format!("{n}: no gradient"))?.clone())))
        .collect::<Result<Vec<_>>>()?;
    Ok((loss, g))
}

fn training_step(dir: &std::path::Path, gpu: &Device) -> Result<serde_json::Value> {
    let (l_gpu, g_gpu) = step(dir, gpu, DType::F32)?;
    let (l_cpu, g_cpu) = step(dir, &Device::Cpu, DType::F32)?;
    if (l_gpu - l_cpu).abs() > 1e-5 * l_cpu.abs() {
        bail!("loss {l_gpu} on the GPU, {l_cpu} on the CPU");
    }
    let mut worst = 0f64;
    for ((name, a), (_, b)) in g_gpu.iter().zip(&g_cpu) {
        let (d, scale) = (max_abs_diff(a, b)?, max_abs(b)?);
        if d > 1e-4 * scale || scale == 0.0 {
            bail!("{name}: the GPU's gradient is {d} from the CPU's (scale {scale})");
        }
        worst = worst.max(d / scale);
    }
    Ok(
        json!({ "loss": l_gpu, "loss_cpu": l_cpu, "adapter_tensors": g_gpu.len(), "worst_relative_gradient_diff": worst }),
    )
}

fn bf16_step(dir: &std::path::Path, gpu: &Device) -> Result<serde_json::Value> {
    let (l16, g16) = step(dir, gpu, DType::BF16)?;
    let (l32, g32) = step(dir, gpu, DType::F32)?;
    if (l16 - l32).abs() > 1e-2 * l32.abs() {
        bail!("loss {l16} with a bf16 base, {l32} with f32");
    }
    let mut worst = 0f64;
    for ((name, a), (_, b)) in g16.iter().zip(&g32) {
        let (d, scale) = (max_abs_diff(a, b)?, max_abs(b)?);
        if d > 3e-2 * scale {
            bail!("{name}: the bf16 base's gradient is {d} from the f32 one (scale {scale})");
        }
        worst = worst.max(d / scale);
    }
    Ok(json!({ "loss_bf16": l16, "loss_f32": l32, "worst_relative_gradient_diff": worst }))
}
