//! Write the files that `scripts/make_fixtures.py` reads with PEFT and transformers, to prove that
//! what this crate saves means the same thing in Python:
//!
//! ```text
//! cargo run --example interop_adapters            # -> tests/fixtures/peft/, tests/fixtures/merged/
//! python scripts/make_fixtures.py                 # PEFT's / transformers' logits, beside them
//! cargo run --example interop_adapters -- --check # regenerate elsewhere, compare with the committed files
//! ```
//!
//! `scripts/regenerate-fixtures.sh` runs the first two in order. The files are the same every
//! run (seeded values, a sorted safetensors header), so `--check` (a CI step) proves that the
//! committed fixtures are what the code writes today: JSON compared by value, tensors by name,
//! dtype, shape and value (a merged weight may differ in its last bit on another CPU), anything
//! else byte for byte.
//!
//! - `peft/<model>-from-rust/`: an adapter (r 4, alpha 8, seeded random A and B) by
//!   `save_lora_weights`;
//! - `peft/tiny-gpt2-split-ours/` and `peft/tiny-gpt2-split-from-rust/`: adapters on the q and v
//!   slices of GPT-2's `c_attn`, in our per-slice format and exported for PEFT (block construction);
//! - `merged/<model>/` and `merged/<model>-adapter/`: a model with a random adapter merged and saved
//!   as a Hugging Face folder, and the adapter it merged.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::Tensor;
use clap::Parser;
use lora_from_scratch::inference::export::{save_peft_adapter, save_pretrained};
use lora_from_scratch::models::load::{load_model, LoadOptions, LoadedModel};
use lora_from_scratch::tasks::t03_inject::{get_lora_parameters, inject_lora};
use lora_from_scratch::tasks::t04_save_load::save_lora_weights;
use lora_from_scratch::tasks::t08_merge::merge_lora_weights;
use lora_from_scratch::LoraConfig;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use safetensors::{Dtype, SafeTensors};

/// A fixture model with an adapter on `targets` whose A and B are seeded random numbers.
fn adapted(fixture: &str, targets: &[&str], split_qkv: bool, seed: u64) -> Result<(LoadedModel, LoraConfig)> {
    let opts = LoadOptions { split_qkv, ..Default::default() };
    let mut m = load_model(&format!("{FIXTURES}/{fixture}"), &opts)?;
    let cfg = LoraConfig::new(4, 8.0, targets);
    inject_lora(m.model.as_mut(), &cfg)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.1)?;
    for (_, v) in get_lora_parameters(m.model.as_ref()) {
        let vals: Vec<f32> = (0..v.elem_count()).map(|_| normal.sample(&mut rng)).collect();
        v.set(&Tensor::from_vec(vals, v.dims(), v.device())?)?;
    }
    Ok((m, cfg))
}

fn main() -> std::process::ExitCode {
    lora_from_scratch::error::exit_code(run())
}

/// The committed fixtures: the base models read from here, and what `--check` compares with.
const FIXTURES: &str = "tests/fixtures";

#[derive(clap::Parser)]
struct Args {
    /// Write under this folder instead of tests/fixtures (the base models are still read from
    /// tests/fixtures).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write to a temporary folder and compare every file with the committed one; exit 1 on a
    /// difference.
    #[arg(long, conflicts_with = "out")]
    check: bool,
}

fn run() -> Result<()> {
    let args = Args::parse();
    if args.check {
        let tmp = tempfile::tempdir()?;
        write_fixtures(tmp.path())?;
        let diffs = compare_tree(tmp.path(), Path::new(FIXTURES))?;
        if !diffs.is_empty() {
            for d in &diffs {
                eprintln!("differs: {d}");
            }
            bail!(
                "{} fixture file(s) differ from what interop_adapters writes now; regenerate them with \
                 scripts/regenerate-fixtures.sh",
                diffs.len()
            );
        }
        println!("the committed interop fixtures are what interop_adapters writes");
        return Ok(());
    }
    let out = args.out.unwrap_or_else(|| PathBuf::from(FIXTURES));
    write_fixtures(&out)?;
    println!("wrote the interop fixtures under {}", out.display());
    Ok(())
}

/// Every fixture this example owns, under `root`.
fn write_fixtures(root: &Path) -> Result<()> {
    // The same targets as PEFT_TARGETS in scripts/make_fixtures.py.
    for (fixture, targets) in [
        ("tiny-gpt2", vec!["c_attn", "mlp.c_proj"]),
        ("tiny-llama", vec!["q_proj", "v_proj", "down_proj"]),
        ("tiny-qwen2", vec!["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]),
        ("tiny-mistral", vec!["q_proj", "v_proj", "gate_proj"]),
    ] {
        let (m, cfg) = adapted(fixture, &targets, false, 7)?;
        save_lora_weights(m.model.as_ref(), &cfg, &root.join(format!("peft/{fixture}-from-rust")))?;

        let (mut m, cfg) = adapted(fixture, &targets, false, 11)?;
        save_lora_weights(m.model.as_ref(), &cfg, &root.join(format!("merged/{fixture}-adapter")))?;
        merge_lora_weights(m.model.as_mut())?;
        save_pretrained(m.model.as_ref(), None, &root.join(format!("merged/{fixture}")))?;
    }
    let (m, cfg) = adapted("tiny-gpt2", &["c_attn.q", "c_attn.v"], true, 13)?;
    save_lora_weights(m.model.as_ref(), &cfg, &root.join("peft/tiny-gpt2-split-ours"))?;
    save_peft_adapter(m.model.as_ref(), &cfg, &root.join("peft/tiny-gpt2-split-from-rust"))?;
    Ok(())
}

/// Every file under `new` against the file at the same path under `old`; one line per
/// difference.
fn compare_tree(new: &Path, old: &Path) -> Result<Vec<String>> {
    let mut diffs = Vec::new();
    let mut stack = vec![new.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(new)?;
            let committed = old.join(rel);
            if !committed.exists() {
                diffs.push(format!("{}: not committed", rel.display()));
            } else if let Some(why) = compare_file(&path, &committed)? {
                diffs.push(format!("{}: {why}", rel.display()));
            }
        }
    }
    diffs.sort();
    Ok(diffs)
}

/// Why `new` and `old` differ, or `None`.
fn compare_file(new: &Path, old: &Path) -> Result<Option<String>> {
    let (a, b) = (std::fs::read(new)?, std::fs::read(old)?);
    if a == b {
        return Ok(None);
    }
    match new.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            let (a, b): (serde_json::Value, serde_json::Value) =
                (serde_json::from_slice(&a)?, serde_json::from_slice(&b)?);
            Ok((a != b).then(|| format!("JSON differs: now {a}, committed {b}")))
        }
        Some("safetensors") => compare_tensors(&a, &b),
        _ => Ok(Some("bytes differ".into())),
    }
}

/// Tensors by name, dtype, shape and value: a value may differ by a few f32 roundings.
fn compare_tensors(a: &[u8], b: &[u8]) -> Result<Option<String>> {
    let (ma, mb) = (SafeTensors::read_metadata(a)?.1, SafeTensors::read_metadata(b)?.1);
    if ma.metadata() != mb.metadata() {
        return Ok(Some(format!("metadata: now {:?}, committed {:?}", ma.metadata(), mb.metadata())));
    }
    let (a, b) = (SafeTensors::deserialize(a)?, SafeTensors::deserialize(b)?);
    let (mut na, mut nb) = (a.names(), b.names());
    na.sort();
    nb.sort();
    if na != nb {
        return Ok(Some(format!("tensor names: now {na:?}, committed {nb:?}")));
    }
    for name in na {
        let (ta, tb) = (a.tensor(name)?, b.tensor(name)?);
        if ta.dtype() != tb.dtype() || ta.shape() != tb.shape() {
            return Ok(Some(format!(
                "{name}: now {:?} {:?}, committed {:?} {:?}",
                ta.dtype(),
                ta.shape(),
                tb.dtype(),
                tb.shape()
            )));
        }
        if ta.data() == tb.data() {
            continue;
        }
        if ta.dtype() != Dtype::F32 {
            return Ok(Some(format!("{name}: {:?} values differ", ta.dtype())));
        }
        let f32s =
            |d: &[u8]| d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
        for (i, (x, y)) in f32s(ta.data()).into_iter().zip(f32s(tb.data())).enumerate() {
            if (x - y).abs() > 1e-6 + 1e-5 * y.abs() {
                return Ok(Some(format!("{name}[{i}]: now {x}, committed {y}")));
            }
        }
    }
    Ok(None)
}
