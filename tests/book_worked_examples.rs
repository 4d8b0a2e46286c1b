//! The worked examples of the task chapters, computed by the reference code: each chapter's
//! `## A worked example` includes `book/src/worked/<task>.txt`, and this test writes what the
//! code computes and fails if the file says anything else, so the numbers a learner reads are
//! the numbers the code gives. After a deliberate change, `BLESS_BOOK=1 cargo test --test
//! book_worked_examples` rewrites the files (review the diff).
//!
//! Runs the reference solutions, so it is compiled out under `exercises` (the graders grade).
#![cfg(not(feature = "exercises"))]

mod common;

use std::fmt::Write as _;
use std::path::Path;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use lora_from_scratch::models::tiny::{TinyConfig, TinyLm};
use lora_from_scratch::tasks::t01_lora_layer::{lora_scaling, LoraLayer};
use lora_from_scratch::tasks::t02_linear_with_lora::LinearWithLora;
use lora_from_scratch::tasks::t03_inject::{count_parameters, get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t04_save_load::{adapter_config, lora_tensors};
use lora_from_scratch::tasks::t05_data::{collate, tokenize_example};
use lora_from_scratch::tasks::t06_train::{clip_grad_norm, lr_at, Decay, Schedule};
use lora_from_scratch::tasks::t07_eval::corpus_bleu;
use lora_from_scratch::tasks::t08_merge::lora_delta;
use lora_from_scratch::tasks::t09_qlora::{nf4_code_book, Nf4Tensor};
use lora_from_scratch::tasks::t10_multi_lora::{combine, Combination};
use lora_from_scratch::tasks::t11_mixed::{find_modules_to_save, mixed_groups, unfreeze_modules_to_save};
use lora_from_scratch::LoraConfig;

const CPU: Device = Device::Cpu;

/// A number as a reader writes it: at most 4 decimals, no trailing zeros.
fn num(x: f64) -> String {
    let s = format!("{x:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// A tensor of rank 1 or 2 as nested lists.
fn show(t: &Tensor) -> String {
    let t = t.to_dtype(DType::F64).unwrap();
    match t.rank() {
        1 => format!("[{}]", t.to_vec1::<f64>().unwrap().into_iter().map(num).collect::<Vec<_>>().join(", ")),
        2 => format!(
            "[{}]",
            t.to_vec2::<f64>()
                .unwrap()
                .into_iter()
                .map(|row| format!("[{}]", row.into_iter().map(num).collect::<Vec<_>>().join(", ")))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        r => panic!("rank {r}"),
    }
}

fn t2(rows: &[&[f32]]) -> Tensor {
    let cols = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), cols), &CPU).unwrap()
}

/// The adapter of chapters t01, t02 and t08: in = 3, out = 2, r = 1, alpha = 2.
fn example_adapter(b: &[&[f32]]) -> LoraLayer {
    let a = t2(&[&[1.0, 0.0, -1.0]]);
    LoraLayer::from_tensors(&a, &t2(b), &LoraConfig::new(1, 2.0, &["layer"])).unwrap()
}

fn x() -> Tensor {
    t2(&[&[1.0, 2.0, 3.0]])
}

fn t01() -> String {
    let mut s = String::new();
    let l = example_adapter(&[&[0.5], &[1.0]]);
    let ax = x().matmul(&l.a().tensor().t().unwrap()).unwrap();
    let bax = ax.matmul(&l.b().tensor().t().unwrap()).unwrap();
    writeln!(s, "x = {}              in = 3", show(&x().squeeze(0).unwrap())).unwrap();
    writeln!(s, "A = {}           [r, in] = [1, 3]", show(l.a().tensor())).unwrap();
    writeln!(s, "B = {}           [out, r] = [2, 1]", show(l.b().tensor())).unwrap();
    writeln!(s, "alpha = 2, r = 1   ->  scaling = alpha / r = {}", num(l.scaling())).unwrap();
    writeln!(s, "x A^T          = {}        down to r features", show(&ax.squeeze(0).unwrap())).unwrap();
    writeln!(s, "(x A^T) B^T    = {}    up to out features", show(&bax.squeeze(0).unwrap())).unwrap();
    let y = l.forward(&x(), false).unwrap();
    writeln!(s, "forward(x)     = {}    times scaling", show(&y.squeeze(0).unwrap())).unwrap();
    let start = example_adapter(&[&[0.0], &[0.0]]);
    writeln!(s, "\nat the start B = {}:", show(start.b().tensor())).unwrap();
    writeln!(s, "forward(x)     = {}", show(&start.forward(&x(), false).unwrap().squeeze(0).unwrap())).unwrap();
    writeln!(s, "\nscaling at r = 4, alpha = 8:").unwrap();
    writeln!(s, "  alpha / r       = {}", num(lora_scaling(8.0, 4, false))).unwrap();
    writeln!(s, "  alpha / sqrt(r) = {}   (rsLoRA)", num(lora_scaling(8.0, 4, true))).unwrap();
    s
}

fn t02() -> String {
    let mut s = String::new();
    let w0 = t2(&[&[1.0, 0.0, 2.0], &[0.0, 1.0, -1.0]]);
    let b0 = Tensor::new(&[0.5f32, -0.5], &CPU).unwrap();
    writeln!(s, "W0 = {}     [out, in] = [2, 3], frozen", show(&w0)).unwrap();
    writeln!(s, "b  = {}", show(&b0)).unwrap();
    writeln!(s, "x  = {}", show(&x().squeeze(0).unwrap())).unwrap();
    let trained = LinearWithLora::new(&w0, Some(&b0), example_adapter(&[&[0.5], &[1.0]])).unwrap();
    let base = x().matmul(&w0.t().unwrap()).unwrap().broadcast_add(&b0).unwrap();
    let lora = trained.lora().forward(&x(), false).unwrap();
    writeln!(s, "\nwith t01's adapter (A = [[1, 0, -1]], B = [[0.5], [1]], scaling 2):").unwrap();
    writeln!(s, "  x W0^T + b     = {}     the frozen base", show(&base.squeeze(0).unwrap())).unwrap();
    writeln!(s, "  lora(x)        = {}", show(&lora.squeeze(0).unwrap())).unwrap();
    writeln!(s, "  forward(x)     = {}", show(&trained.forward(&x(), false).unwrap().squeeze(0).unwrap())).unwrap();
    let fresh = LinearWithLora::new(&w0, Some(&b0), example_adapter(&[&[0.0], &[0.0]])).unwrap();
    writeln!(s, "\nat the start (B = 0):").unwrap();
    writeln!(
        s,
        "  forward(x)     = {}     the base, exactly",
        show(&fresh.forward(&x(), false).unwrap().squeeze(0).unwrap())
    )
    .unwrap();
    s
}

fn tiny() -> TinyLm {
    TinyLm::new(TinyConfig::default(), 7, &CPU).unwrap()
}

fn t03() -> String {
    let mut s = String::new();
    let mut m = tiny();
    let before = count_parameters(&m);
    let summary = inject_lora(&mut m, &LoraConfig::new(4, 8.0, &["q_proj", "v_proj"])).unwrap();
    let _ = summary;
    let after = count_parameters(&m);
    writeln!(s, "the tiny test model: {} parameters", before.total).unwrap();
    writeln!(s, "inject_lora(r = 4, alpha = 8, target_modules = [q_proj, v_proj]) adapts:").unwrap();
    for (name, v) in get_lora_parameters(&m) {
        writeln!(s, "  {name:<40} {:?}", v.dims()).unwrap();
    }
    writeln!(
        s,
        "\ntrainable params: {} || all params: {} || trainable%: {:.4}",
        after.trainable,
        after.total,
        100.0 * after.trainable as f64 / after.total as f64
    )
    .unwrap();
    s
}

fn t04() -> String {
    let mut s = String::new();
    let mut m = tiny();
    let config = LoraConfig::new(4, 8.0, &["q_proj", "v_proj"]);
    inject_lora(&mut m, &config).unwrap();
    writeln!(s, "adapter_model.safetensors (the same model and config as t03):").unwrap();
    for (key, t) in lora_tensors(&m, &config).unwrap() {
        writeln!(s, "  {key:<58} {:?}", t.dims()).unwrap();
    }
    let json = serde_json::to_value(adapter_config(&m, &config)).unwrap();
    writeln!(s, "\nadapter_config.json, the fields PEFT reads first:").unwrap();
    for field in ["peft_type", "task_type", "r", "lora_alpha", "target_modules", "lora_dropout", "use_rslora"] {
        writeln!(s, "  {field}: {}", json[field]).unwrap();
    }
    s
}

fn t05() -> String {
    let mut s = String::new();
    let ex = tokenize_example(&[10, 11, 12], &[20, 21], 2, 16).unwrap();
    writeln!(s, "prompt ids [10, 11, 12], response ids [20, 21], eos 2:").unwrap();
    writeln!(s, "  input_ids = {:?}", ex.input_ids).unwrap();
    writeln!(s, "  labels    = {:?}", ex.labels).unwrap();
    let short = tokenize_example(&[10], &[30], 2, 16).unwrap();
    writeln!(s, "\nprompt [10], response [30]:").unwrap();
    writeln!(s, "  input_ids = {:?}", short.input_ids).unwrap();
    writeln!(s, "  labels    = {:?}", short.labels).unwrap();
    let cut = tokenize_example(&[10, 11, 12], &[20, 21], 2, 4).unwrap();
    writeln!(s, "\nthe first example cut to max_len = 4:").unwrap();
    writeln!(s, "  input_ids = {:?}, labels = {:?}, truncated = {}", cut.input_ids, cut.labels, cut.truncated).unwrap();
    let batch = collate(&[ex, short], 0, &CPU).unwrap();
    writeln!(s, "\ncollate(both, pad 0):").unwrap();
    writeln!(s, "  input_ids      = {:?}", batch.input_ids.to_vec2::<u32>().unwrap()).unwrap();
    writeln!(s, "  labels         = {:?}", batch.labels.to_vec2::<i64>().unwrap()).unwrap();
    writeln!(s, "  attention_mask = {:?}", batch.attention_mask.to_vec2::<u32>().unwrap()).unwrap();
    s
}

fn t06() -> String {
    let mut s = String::new();
    let schedule =
        Schedule { peak_lr: 2e-4, warmup_steps: 3, total_steps: 10, decay: Decay::Cosine, min_lr_ratio: 0.1 };
    writeln!(s, "lr_at: peak 2e-4, warmup 3, 10 steps (numbered from 0), cosine down to 10 %").unwrap();
    for step in 0..10 {
        writeln!(s, "  step {step}: {:.3e}", lr_at(&schedule, step)).unwrap();
    }
    let v = Var::from_tensor(&Tensor::new(&[3f32, 4.0], &CPU).unwrap()).unwrap();
    let loss = (v.as_tensor() * Tensor::new(&[3f32, 4.0], &CPU).unwrap()).unwrap().sum_all().unwrap();
    let mut grads: GradStore = loss.backward().unwrap();
    let before = show(grads.get(v.as_tensor()).unwrap());
    let norm = clip_grad_norm(&mut grads, std::slice::from_ref(&v), 1.0).unwrap();
    writeln!(s, "\nclip_grad_norm, max norm 1:").unwrap();
    writeln!(s, "  gradient before = {before}, norm = {}", num(norm)).unwrap();
    writeln!(s, "  gradient after  = {}", show(grads.get(v.as_tensor()).unwrap())).unwrap();
    s
}

fn t07() -> String {
    let mut s = String::new();
    writeln!(s, "perplexity = exp(mean loss per supervised token):").unwrap();
    for loss in [0.0f64, 1.0, 2.5] {
        writeln!(s, "  mean loss {loss}: perplexity {}", num(loss.exp())).unwrap();
    }
    let hyps = vec!["the cat sat on the mat".to_string(), "a dog ran in the park".to_string()];
    let refs = vec![
        vec!["the cat sat on the mat".to_string()],
        vec!["a dog runs in the park".to_string(), "the dog ran in a park".to_string()],
    ];
    writeln!(s, "\ncorpus BLEU-4:").unwrap();
    for (h, r) in hyps.iter().zip(&refs) {
        writeln!(s, "  hypothesis {h:?}").unwrap();
        writeln!(s, "    references {r:?}").unwrap();
    }
    writeln!(s, "  BLEU = {}", num(corpus_bleu(&hyps, &refs))).unwrap();
    writeln!(s, "the first pair alone: BLEU = {}", num(corpus_bleu(&hyps[..1], &refs[..1]))).unwrap();
    let short = vec!["the cat".to_string()];
    writeln!(
        s,
        "a 2-word hypothesis \"the cat\" against the first reference: BLEU = {}",
        num(corpus_bleu(&short, &refs[..1]))
    )
    .unwrap();
    s
}

fn t08() -> String {
    let mut s = String::new();
    let w0 = t2(&[&[1.0, 0.0, 2.0], &[0.0, 1.0, -1.0]]);
    let b0 = Tensor::new(&[0.5f32, -0.5], &CPU).unwrap();
    let lora = example_adapter(&[&[0.5], &[1.0]]);
    let delta = lora_delta(&lora).unwrap();
    let merged = (&w0 + &delta).unwrap();
    writeln!(s, "t02's layer: W0 = {}, b = {}", show(&w0), show(&b0)).unwrap();
    writeln!(s, "scaling B A    = {}", show(&delta)).unwrap();
    writeln!(s, "W0 + scaling B A = {}", show(&merged)).unwrap();
    let layer = LinearWithLora::new(&w0, Some(&b0), lora).unwrap();
    let plain = x().matmul(&merged.t().unwrap()).unwrap().broadcast_add(&b0).unwrap();
    writeln!(s, "\nx = {}", show(&x().squeeze(0).unwrap())).unwrap();
    writeln!(s, "  base + adapter:  {}", show(&layer.forward(&x(), false).unwrap().squeeze(0).unwrap())).unwrap();
    writeln!(s, "  merged layer:    {}", show(&plain.squeeze(0).unwrap())).unwrap();
    s
}

fn t09() -> String {
    let mut s = String::new();
    let book = nf4_code_book();
    writeln!(s, "the 16 NF4 levels:").unwrap();
    for row in book.chunks(4) {
        writeln!(s, "  {}", row.iter().map(|v| format!("{v:>8.4}")).collect::<Vec<_>>().join(" ")).unwrap();
    }
    // One block of 64 whose absmax is 2: eight values shown, the rest small.
    let mut values = vec![0.01f32; 64];
    values[..8].copy_from_slice(&[2.0, -1.0, 0.5, 0.1, -0.3, 1.5, 0.0, -2.0]);
    let t = Tensor::from_vec(values, (1, 64), &CPU).unwrap();
    let q = Nf4Tensor::quantize(&t).unwrap();
    let back = q.dequantize(&CPU).unwrap().flatten_all().unwrap().narrow(0, 0, 8).unwrap();
    let codes: Vec<u8> = q.packed_codes()[..4].iter().flat_map(|b| [b >> 4, b & 0xF]).collect();
    writeln!(s, "\na block of 64 values, the first eight:").unwrap();
    writeln!(s, "  values      = {}", show(&t.flatten_all().unwrap().narrow(0, 0, 8).unwrap())).unwrap();
    writeln!(s, "  absmax      = {} (stored 8-bit, double-quantized)", num(f64::from(q.block_absmax(0)))).unwrap();
    writeln!(s, "  packed bytes, high and low nibble = codes {codes:?}").unwrap();
    writeln!(s, "  dequantized = {}", show(&back)).unwrap();
    let err = (t.flatten_all().unwrap().narrow(0, 0, 8).unwrap() - &back).unwrap().abs().unwrap();
    writeln!(s, "  |error|     = {}", show(&err)).unwrap();
    writeln!(s, "  bits per parameter, this one block: {}", num(q.bits_per_parameter())).unwrap();
    let big = Tensor::randn(0f32, 1.0, (256, 256), &CPU).unwrap();
    writeln!(
        s,
        "  bits per parameter, a 256 x 256 weight: {}",
        num(Nf4Tensor::quantize(&big).unwrap().bits_per_parameter())
    )
    .unwrap();
    s
}

fn t10() -> String {
    let mut s = String::new();
    let mut rng = common::rng(3);
    let cfg = LoraConfig::new(2, 4.0, &["layer"]);
    let one = LoraLayer::new(3, 2, &cfg, &mut rng, DType::F32, &CPU).unwrap();
    let two = LoraLayer::new(3, 2, &cfg, &mut rng, DType::F32, &CPU).unwrap();
    writeln!(s, "two adapters on one layer (in 3, out 2), r = 2, scaling 2 each:").unwrap();
    writeln!(s, "  A: {:?}, B: {:?}", one.a().tensor().dims(), one.b().tensor().dims()).unwrap();
    for (how, name) in [(Combination::Linear, "linear"), (Combination::Cat, "cat")] {
        let (a, b) = combine(&[(&one, 0.5), (&two, 0.5)], how).unwrap();
        writeln!(
            s,
            "combined {name:<6} with weights 0.5, 0.5: A {:?}, B {:?}, rank {}",
            a.dims(),
            b.dims(),
            a.dims()[0]
        )
        .unwrap();
    }
    s
}

fn t11() -> String {
    let mut s = String::new();
    let mut m = tiny();
    inject_lora(&mut m, &LoraConfig::new(4, 8.0, &["q_proj", "v_proj"])).unwrap();
    let entries = vec!["norm".to_string()];
    let found = find_modules_to_save(&m, &entries).unwrap();
    writeln!(s, "modules_to_save = [\"norm\"] on the tiny model with q_proj, v_proj adapted selects:").unwrap();
    for name in &found {
        writeln!(s, "  {name}").unwrap();
    }
    let full = unfreeze_modules_to_save(&mut m, &entries).unwrap();
    writeln!(s, "\nmixed_groups(LoRA+ ratio 16, modules at 0.1 x the learning rate):").unwrap();
    for g in mixed_groups(&m, full, 16.0, 0.1) {
        let n: usize = g.vars.iter().map(|(_, v)| v.elem_count()).sum();
        writeln!(s, "  {:<16} {:>2} tensors, {:>5} numbers, lr x {}", g.name, g.vars.len(), n, num(g.lr_scale))
            .unwrap();
    }
    s
}

#[test]
fn every_worked_example_is_what_the_code_computes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("book/src/worked");
    let bless = std::env::var_os("BLESS_BOOK").is_some();
    type Example = (&'static str, fn() -> String);
    let examples: [Example; 11] = [
        ("t01_lora_layer", t01),
        ("t02_linear_with_lora", t02),
        ("t03_inject", t03),
        ("t04_save_load", t04),
        ("t05_data", t05),
        ("t06_train", t06),
        ("t07_eval", t07),
        ("t08_merge", t08),
        ("t09_qlora", t09),
        ("t10_multi_lora", t10),
        ("t11_mixed", t11),
    ];
    let mut stale = Vec::new();
    for (task, compute) in examples {
        let path = dir.join(format!("{task}.txt"));
        let text = compute();
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(format!("{}:\n{text}", path.display()));
        }
        let chapter = std::fs::read_to_string(dir.parent().unwrap().join(format!("{task}.md"))).unwrap();
        assert!(
            chapter.contains(&format!("{{{{#include worked/{task}.txt}}}}")),
            "book/src/{task}.md does not include worked/{task}.txt"
        );
    }
    assert!(
        stale.is_empty(),
        "worked examples differ from what the code computes (BLESS_BOOK=1 rewrites them):\n{}",
        stale.join("\n")
    );
}
