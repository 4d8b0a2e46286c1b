//! Helpers shared by the graders: seeded random tensors, plain-loop reference maths, and a
//! finite-difference gradient check. Nothing here calls the code under test.
#![allow(dead_code)]

pub mod shapes;

use candle_core::{DType, Device, Tensor, Var};
use lora_from_scratch::models::tiny::{TinyConfig, TinyLm};
use lora_from_scratch::tasks::lang::{book_pointer, Lang};
use lora_from_scratch::{LinearSlot, LoraModel, Param};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

pub const CPU: Device = Device::Cpu;

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A tensor of N(0, 1) values.
pub fn randn(rng: &mut StdRng, shape: &[usize], dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let normal = Normal::new(0.0f64, 1.0).unwrap();
    let v: Vec<f64> = normal.sample_iter(rng).take(n).collect();
    Tensor::from_vec(v, shape, &CPU).unwrap().to_dtype(dtype).unwrap()
}

/// Every value as f64, flattened.
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// The bit patterns of an f32 tensor: for "bitwise equal" checks.
pub fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// `a` and `b` agree element by element within `epsilon` (approx's `abs_diff_eq!` on the two
/// slices); otherwise a message naming the first element that does not, with both values, and
/// the largest difference. The graders compare through [`assert_close!`] and
/// [`prop_assert_close!`], which put the property's own words in front of it.
pub fn close(a: &[f64], b: &[f64], epsilon: f64) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} values against {}", a.len(), b.len()));
    }
    if approx::abs_diff_eq!(a, b, epsilon = epsilon) {
        return Ok(());
    }
    let (i, (x, y)) = a
        .iter()
        .zip(b)
        .enumerate()
        .find(|(_, (x, y))| !approx::abs_diff_eq!(**x, **y, epsilon = epsilon))
        .expect("a pair differs");
    Err(format!("element {i} is {x}, expected {y}; largest difference {:e}, allowed {epsilon:e}", max_abs_diff(a, b)))
}

/// `assert_close!(got, want, epsilon, "what it means")`: [`close`] or a panic with the message
/// and both values.
#[macro_export]
macro_rules! assert_close {
    ($a:expr, $b:expr, $eps:expr, $($msg:tt)+) => {
        if let Err(e) = $crate::common::close(&$a, &$b, $eps) {
            panic!("{}: {}", format!($($msg)+), e);
        }
    };
}

/// [`assert_close!`] inside `proptest!`: fails the case (so proptest shrinks it) instead of
/// panicking.
#[macro_export]
macro_rules! prop_assert_close {
    ($a:expr, $b:expr, $eps:expr, $($msg:tt)+) => {
        if let Err(e) = $crate::common::close(&$a, &$b, $eps) {
            return Err(proptest::test_runner::TestCaseError::fail(format!("{}: {}", format!($($msg)+), e)));
        }
    };
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared tensors differ in size");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// `x [n, k] @ w^T` for `w [m, k]`, by plain loops in f64: the reference for every matmul.
pub fn ref_matmul_t(x: &[f64], n: usize, k: usize, w: &[f64], m: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum();
        }
    }
    out
}

/// Check the gradient of the scalar `loss(x)` with respect to `x` against central differences,
/// on up to `max_checks` entries. Works in f64 so that the comparison is tight.
pub fn finite_difference_check(x: &Var, loss: impl Fn(&Tensor) -> Tensor, max_checks: usize) -> Result<(), String> {
    let l = loss(x.as_tensor());
    let grads = l.backward().map_err(|e| e.to_string())?;
    let analytic = match grads.get(x.as_tensor()) {
        Some(g) => values(g),
        None => return Err("backpropagation produced no gradient at all for the input".into()),
    };
    let base = values(x.as_tensor());
    let shape = x.as_tensor().dims().to_vec();
    let eps = 1e-6;
    let step = (base.len() / max_checks).max(1);
    for i in (0..base.len()).step_by(step) {
        let eval = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            let t = Tensor::from_vec(v, shape.as_slice(), &CPU).unwrap();
            values(&loss(&t))[0]
        };
        let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
        let tol = 1e-6 + 1e-5 * numeric.abs().max(analytic[i].abs());
        if (numeric - analytic[i]).abs() > tol {
            return Err(format!(
                "d loss / d x[{i}]: backprop gives {}, finite differences give {numeric}",
                analytic[i]
            ));
        }
    }
    Ok(())
}

/// The graders' model, small and seeded.
pub fn tiny(seed: u64) -> TinyLm {
    TinyLm::new(TinyConfig::default(), seed, &CPU).unwrap()
}

/// Token ids [batch, seq] for the tiny model.
pub fn token_ids(rng: &mut StdRng, batch: usize, seq: usize, vocab: usize) -> Tensor {
    use rand::Rng;
    let v: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(0..vocab as u32)).collect();
    Tensor::from_vec(v, (batch, seq), &CPU).unwrap()
}

/// Every trainable `Var` the model holds, found by walking it (not through the code under
/// test): base linears, adapters and other weights.
pub fn all_trainable_vars(model: &dyn LoraModel) -> Vec<(String, Var)> {
    let mut out = Vec::new();
    for (name, slot) in model.linears() {
        let params: Vec<(&str, &Param)> = match (slot, slot.adapter()) {
            (LinearSlot::Linear(l), _) => l.named_params(),
            (_, Some(a)) => vec![("lora_A.weight", a.a()), ("lora_B.weight", a.b())],
            (_, None) => Vec::new(),
        };
        for (p, param) in params {
            if let Some(v) = param.var() {
                out.push((format!("{name}.{p}"), v.clone()));
            }
        }
    }
    for (name, p) in model.params() {
        if let Some(v) = p.var() {
            out.push((name, v.clone()));
        }
    }
    out
}

/// Make every base weight of the model trainable, as for full fine-tuning.
pub fn unfreeze_everything(model: &mut dyn LoraModel) {
    for (_, slot) in model.linears_mut() {
        if let LinearSlot::Linear(l) = slot {
            l.weight.unfreeze().unwrap();
            if let Some(b) = &mut l.bias {
                b.unfreeze().unwrap();
            }
        }
    }
    for (_, p) in model.params_mut() {
        p.unfreeze().unwrap();
    }
}

/// Base weights (not adapters) by name, as f32 bit patterns.
pub fn base_weight_bits(model: &dyn LoraModel) -> Vec<(String, Vec<u32>)> {
    let mut out: Vec<(String, Vec<u32>)> =
        model.linears().into_iter().map(|(n, s)| (n, bits(&s.base_weight().unwrap()))).collect();
    out.extend(model.params().into_iter().map(|(n, p)| (n, bits(p.tensor()))));
    out
}

/// The book section (chapter, heading) of the test running on this thread, whether it was
/// already shown, and the panic locations already reported on this thread.
type Section = (Option<(String, String)>, bool, Vec<String>);

thread_local! {
    static SECTION: std::cell::RefCell<Section> =
        const { std::cell::RefCell::new((None, false, Vec::new())) };
}

/// Name the book section that explains the property this test checks. If the test fails, the
/// failure output ends with a pointer to it, in the reader's language: the Chinese chapter's
/// section when `LORA_LANG=zh` or the locale is Chinese (`tasks::lang::Lang::from_env`). proptest re-runs a failing body many times
/// while it shrinks the input; each distinct panic is reported once, and the pointer once.
pub fn book(chapter: &str, heading: &str) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info.location().map(|l| l.to_string()).unwrap_or_default();
            SECTION.with(|s| {
                let (section, shown, seen) = &mut *s.borrow_mut();
                if !seen.contains(&location) {
                    seen.push(location);
                    default(info);
                }
                if let (Some((chapter, heading)), false) = (section.as_ref(), *shown) {
                    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
                    eprintln!("\n  -> {}\n", book_pointer(root, Lang::from_env(), chapter, heading));
                    *shown = true;
                }
            });
        }));
    });
    SECTION.with(|s| {
        let mut s = s.borrow_mut();
        if s.0.as_ref().is_none_or(|(c, h)| c != chapter || h != heading) {
            *s = (Some((chapter.to_string(), heading.to_string())), false, Vec::new());
        }
    });
}

/// proptest settings for the graders: `cases` random inputs drawn from a fixed seed, so that a
/// grader gives the same verdict on every run (the mutant suite relies on it), after the cases
/// recorded in `tests/<grader>.proptest-regressions` (read first; a new failure is added there).
pub fn proptest_config(cases: u32) -> proptest::prelude::ProptestConfig {
    use proptest::test_runner::{FileFailurePersistence, RngSeed};
    proptest::prelude::ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel("proptest-regressions"))),
        rng_seed: RngSeed::Fixed(0x10ad_f00d),
        ..Default::default()
    }
}

/// SmolLM2-135M-Instruct's GGUF, or `None` with a line that `cargo test` shows: a skipped test
/// passes, so the reason is written past libtest's capture of `eprintln!`, straight to the
/// process's stderr. Under `LORA_FROM_SCRATCH_REQUIRE_MODELS=1` (CI) a missing model fails.
#[allow(dead_code)] // not every test binary that includes `common` uses it
pub fn smollm2_or_skip() -> Option<std::path::PathBuf> {
    use std::io::Write;
    if let Some(path) = lora_from_scratch::fetch::offline_models::SMOLLM2.cached() {
        return Some(path);
    }
    let msg = "SmolLM2-135M-Instruct is not fetched: run scripts/fetch-smollm2.sh";
    if std::env::var("LORA_FROM_SCRATCH_REQUIRE_MODELS").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    // libtest runs each test on a thread named after it.
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    let _ = writeln!(std::io::stderr().lock(), "{test}: skipped, {msg}");
    None
}

/// Four short sequences that are their own labels, `(i * stride + k) % 50 + 1`: a set the tiny
/// model can learn in a few steps.
pub fn own_label_examples(stride: u32) -> Vec<lora_from_scratch::tasks::t05_data::Example> {
    (0..4)
        .map(|k| {
            let ids: Vec<u32> = (0..8).map(|i| (i * stride + k) % 50 + 1).collect();
            lora_from_scratch::tasks::t05_data::Example {
                labels: ids.iter().map(|&i| i as i64).collect(),
                input_ids: ids,
                truncated: 0,
            }
        })
        .collect()
}

/// A constant learning rate of 1e-2, batches of 4, clipping at 1, no checkpoints or progress bar.
pub fn train_config(
    out: &std::path::Path,
    steps: usize,
    eval_every: usize,
) -> lora_from_scratch::tasks::t06_train::TrainConfig {
    use lora_from_scratch::tasks::t06_train::{Decay, Schedule};
    lora_from_scratch::tasks::t06_train::TrainConfig {
        schedule: Schedule {
            peak_lr: 1e-2,
            warmup_steps: 0,
            total_steps: steps,
            decay: Decay::Constant,
            min_lr_ratio: 1.0,
        },
        batch_size: 4,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        weight_decay: 0.0,
        eval_every,
        out_dir: out.to_path_buf(),
        seed: 0,
        resume: false,
        stop_after: None,
        progress: false,
    }
}
