//! Saves are atomic as a whole: a process killed (SIGKILL, nothing flushed, no destructor run)
//! at a random moment while it saves an adapter folder or a checkpoint over and over leaves the
//! previous save or the new one, never a mix, and the next save removes what the killed one left
//! behind.
//!
//! Each test runs this same test binary again as a child (`child_saver`, ignored in a normal
//! run), which saves in a loop, and kills it after a random delay, many times.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use candle_core::{Device, Tensor, Var};
use lora_from_scratch::peft::file::{write_adapter, AdapterFile};
use lora_from_scratch::peft::format::{peft_key, AdapterConfig, LoraMatrix};
use lora_from_scratch::train::checkpoint::{checkpoint_dir, read_checkpoint_state, save_checkpoint};
use lora_from_scratch::train::history::TrainHistory;
use lora_from_scratch::train::optim::{AdamW, AdamWParams};
use lora_from_scratch::LoraConfig;
use rand::{Rng, SeedableRng};

const CHILD_DIR: &str = "LORA_ATOMIC_SAVES_DIR";
const CHILD_MODE: &str = "LORA_ATOMIC_SAVES_MODE";
const MODULE: &str = "model.layers.0.self_attn.q_proj";
const KILLS: usize = 40;

/// Save number `k`: rank, alpha and every weight's value all follow from it, so a folder that
/// mixes two saves is seen (rank 4 alpha 8 with values k, or rank 8 alpha 32 with values k).
fn save_adapter(dir: &Path, k: usize) {
    let (r, alpha) = if k.is_multiple_of(2) { (4, 8.0) } else { (8, 32.0) };
    let config = AdapterConfig::from_lora_config(&LoraConfig::new(r, alpha, &["q_proj"]), "tiny");
    let value = k as f32;
    let tensors = BTreeMap::from([
        (peft_key(MODULE, LoraMatrix::A), Tensor::full(value, (r, 16), &Device::Cpu).unwrap()),
        (peft_key(MODULE, LoraMatrix::B), Tensor::full(value, (16, r), &Device::Cpu).unwrap()),
    ]);
    write_adapter(dir, &config, &tensors).unwrap();
}

/// The save number an adapter folder holds; panics if its parts disagree.
fn read_adapter(dir: &Path) -> usize {
    let file = AdapterFile::read(dir).unwrap_or_else(|e| panic!("a killed save left an unreadable folder: {e}"));
    let (r, alpha) = (file.config.r, file.config.lora_alpha);
    let a = file.tensor(&peft_key(MODULE, LoraMatrix::A), &[r, 16], candle_core::DType::F32, &Device::Cpu);
    let a = a.unwrap_or_else(|p| panic!("config says rank {r}, the weights disagree: {p}"));
    let b = file.tensor(&peft_key(MODULE, LoraMatrix::B), &[16, r], candle_core::DType::F32, &Device::Cpu).unwrap();
    let k = a.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as usize;
    assert_eq!(b.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as usize, k, "A of one save, B of another");
    let expected = if k.is_multiple_of(2) { (4, 8.0) } else { (8, 32.0) };
    assert_eq!((r, alpha), expected, "the config of one save beside the weights of save {k}");
    k
}

fn save_check(out: &Path, opt: &mut AdamW, k: usize) {
    // The optimizer's step count follows the save number too.
    while opt.steps() < k {
        let var = opt.vars()[0].1.clone();
        let grads = var.as_tensor().sum_all().unwrap().backward().unwrap();
        opt.step(&grads).unwrap();
    }
    let history = TrainHistory { best: Some((k, k as f64)), ..Default::default() };
    save_checkpoint(opt, k, &history, out, |dir| {
        save_adapter(dir, k);
        Ok(())
    })
    .unwrap();
}

/// Run by the tests below as a child process: save forever until killed.
#[test]
#[ignore = "run by the kill tests as a child process"]
fn child_saver() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MODE)) else { return };
    let dir = Path::new(&dir);
    // Where the last child stopped (a kill may have cut this file too: then from 1).
    let start: usize = std::fs::read_to_string(dir.join("next")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1);
    let var = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    let mut opt = AdamW::new(vec![("w".into(), var)], AdamWParams::default()).unwrap();
    for k in start.. {
        match mode.as_str() {
            "adapter" => save_adapter(&dir.join("adapter"), k),
            _ => save_check(&dir.join("run"), &mut opt, k),
        }
        std::fs::write(dir.join("next"), (k + 1).to_string()).unwrap();
    }
}

/// Start the child saver, kill it after a random delay, `KILLS` times; after each kill `check`
/// reads what is on disk. Returns the save numbers seen.
fn kill_repeatedly(dir: &Path, mode: &str, check: impl Fn() -> usize) -> BTreeSet<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut seen = BTreeSet::new();
    let progress = || std::fs::read_to_string(dir.join("next")).unwrap_or_default();
    for _ in 0..KILLS {
        let before = progress();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "child_saver", "--test-threads=1"])
            .env(CHILD_DIR, dir)
            .env(CHILD_MODE, mode)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Once the child has finished a save (a slow machine may take a while to start it), kill
        // it at a random moment of the saves that follow.
        let started = std::time::Instant::now();
        while progress() == before && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        seen.insert(check());
    }
    seen
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect()
}

#[test]
fn a_killed_adapter_save_leaves_one_whole_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    save_adapter(&adapter, 0);
    let seen = kill_repeatedly(dir.path(), "adapter", || read_adapter(&adapter));
    // The kills fell while saves of both ranks were being written.
    assert!(seen.len() >= 10 && seen.iter().any(|k| k % 2 == 0) && seen.iter().any(|k| k % 2 == 1), "{seen:?}");
    // The next save clears what killed ones left.
    save_adapter(&adapter, 1000);
    assert_eq!(read_adapter(&adapter), 1000);
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn a_killed_checkpoint_save_resumes_from_one_whole_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let check = || {
        let (step, history) = read_checkpoint_state(&out).unwrap().expect("a checkpoint is there");
        assert_eq!(history.best, Some((step, step as f64)), "the history of one save beside the step of another");
        let k = read_adapter(&checkpoint_dir(&out));
        assert_eq!(k, step, "the adapter of save {k} in the checkpoint of step {step}");
        let var = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var)], AdamWParams::default()).unwrap();
        opt.load_state(&checkpoint_dir(&out).join("optimizer.safetensors")).unwrap();
        assert_eq!(opt.steps(), step, "the optimizer of another step");
        step
    };
    let var = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    save_check(&out, &mut AdamW::new(vec![("w".into(), var)], AdamWParams::default()).unwrap(), 0);
    let seen = kill_repeatedly(dir.path(), "checkpoint", check);
    assert!(seen.len() >= 10, "{seen:?}");
    let var = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    save_check(&out, &mut AdamW::new(vec![("w".into(), var)], AdamWParams::default()).unwrap(), 3);
    assert_eq!(check(), 3);
    assert_eq!(leftovers(&out), Vec::<String>::new());
    assert_eq!(leftovers(dir.path()), Vec::<String>::new());
}

/// The same adapter saved twice is the same bytes: safetensors' metadata (every tensor's
/// checksum) comes from a HashMap, and its order must not leak into the file, or fixtures
/// regenerated from the same seed would differ. The file still reads back.
#[test]
fn the_same_adapter_is_the_same_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = AdapterConfig::from_lora_config(&LoraConfig::new(4, 8.0, &["q_proj"]), "tiny");
    let mut tensors = BTreeMap::new();
    for layer in 0..6 {
        let module = format!("model.layers.{layer}.self_attn.q_proj");
        tensors.insert(peft_key(&module, LoraMatrix::A), Tensor::full(layer as f32, (4, 16), &Device::Cpu).unwrap());
        tensors.insert(peft_key(&module, LoraMatrix::B), Tensor::full(-(layer as f32), (16, 4), &Device::Cpu).unwrap());
    }
    write_adapter(a.path(), &config, &tensors).unwrap();
    write_adapter(b.path(), &config, &tensors).unwrap();
    let read = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(read(a.path()), read(b.path()), "two saves of one adapter differ (metadata order?)");
    let file = AdapterFile::read(a.path()).unwrap();
    let t = file.tensor(
        &peft_key("model.layers.5.self_attn.q_proj", LoraMatrix::B),
        &[16, 4],
        candle_core::DType::F32,
        &Device::Cpu,
    );
    assert!(t.is_ok(), "the sorted file reads back: {:?}", t.err());
}
