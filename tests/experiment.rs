//! The experiments runner's pieces: cached runs that resume instead of repeating, the report, and
//! the full fine-tuning loop.

mod common;

use std::cell::Cell;
use std::path::Path;

use lora_from_scratch::experiments::report::write_report;

use lora_from_scratch::experiments::spec::{run_cached, run_sweep, Method, RunResult, RunSpec};
use lora_from_scratch::train::history::{EvalRecord, StepRecord, TrainHistory};

use common::{own_label_examples, train_config};

fn spec(name: &str, rank: usize) -> RunSpec {
    RunSpec {
        name: name.into(),
        method: Method::Lora { targets: vec!["q_proj".into()], rank, alpha: 16.0 },
        steps: 4,
        lr: 1e-3,
        batch_size: 2,
        eval_every: 2,
        eval_mrs: 3,
        seed: 1,
        base: None,
    }
}

fn result(spec: &RunSpec, bleu: f64) -> RunResult {
    let history = TrainHistory {
        train: (1..=4)
            .map(|s| StepRecord {
                step: s,
                loss: 3.0 - s as f64 * 0.1,
                lr: 1e-3,
                grad_norm: 1.0,
                tokens: 10,
                tokens_per_s: 5.0,
            })
            .collect(),
        val: vec![EvalRecord { step: 2, val_loss: 2.9 }, EvalRecord { step: 4, val_loss: 2.7 + bleu / 1000.0 }],
        best: Some((4, 2.7)),
    };
    RunResult {
        spec: spec.clone(),
        model: "test".into(),
        trainable_params: 1000 * (bleu as usize + 1),
        adapter_bytes: Some(4096),
        train_s: 1.0,
        tokens_per_s: 40.0,
        peak_rss_mib: 100.0,
        final_train_loss: 2.75,
        best_val_loss: 2.7,
        val_perplexity: 14.9,
        bleu,
        samples: vec![("name[A]".into(), format!("output {bleu}"))],
        history,
        base_bytes: 1000,
        base_bytes_f32: 1000,
    }
}

#[test]
fn a_finished_run_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec("r8", 8);
    let calls = Cell::new(0);
    let first = run_cached(dir.path(), &s, |s| {
        calls.set(calls.get() + 1);
        Ok(result(s, 40.0))
    })
    .unwrap();
    assert!(dir.path().join("r8/result.json").is_file());
    let again = run_cached(dir.path(), &s, |_| panic!("the cached run was repeated")).unwrap();
    assert_eq!(first, again);
    assert_eq!(calls.get(), 1);
    // The same name with other settings is an error that names the file, not a silent reuse.
    let err =
        run_cached(dir.path(), &spec("r8", 16), |_| panic!("ran over an existing result")).unwrap_err().to_string();
    assert!(err.contains("result.json") && err.contains("different settings"), "{err}");
}

#[test]
fn a_failed_run_leaves_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec("broken", 8);
    let err = run_cached(dir.path(), &s, |_| Err(lora_from_scratch::LoraError::config("loss", "is NaN"))).unwrap_err();
    assert!(err.to_string().contains("NaN"));
    assert!(!dir.path().join("broken/result.json").exists(), "a failed run must be retried, not cached");
}

/// A run that diverges is left out of the sweep's results and named, with its step, and the
/// sweep goes on; any other error stops the sweep. Nothing is cached for a diverged run.
#[test]
fn a_sweep_names_a_diverged_run_and_goes_on() {
    use lora_from_scratch::LoraError;
    let dir = tempfile::tempdir().unwrap();
    let specs = [spec("r4", 4), spec("r8", 8), spec("r16", 16)];
    let diverge = |s: &RunSpec| LoraError::Diverged {
        step: 7,
        loss: f64::NAN,
        peak_lr: s.lr,
        what: "the loss is NaN at step 7".into(),
        kept: "no weights were kept".into(),
    };
    let outcome =
        run_sweep(dir.path(), &specs, |s| if s.name == "r8" { Err(diverge(s)) } else { Ok(result(s, s.lr * 1e4)) })
            .unwrap();
    let names: Vec<&str> = outcome.results.iter().map(|r| r.spec.name.as_str()).collect();
    assert_eq!(names, ["r4", "r16"], "the runs after the diverged one still ran, in order");
    assert_eq!(outcome.diverged.len(), 1, "{:?}", outcome.diverged);
    assert!(outcome.diverged[0].starts_with("r8: diverged at step 7"), "{:?}", outcome.diverged);
    assert!(!dir.path().join("r8/result.json").exists(), "a diverged run is not cached");
    // Another error is not a finding: it stops the sweep.
    let dir = tempfile::tempdir().unwrap();
    let ran = Cell::new(0);
    let err = run_sweep(dir.path(), &specs, |_| {
        ran.set(ran.get() + 1);
        Err(LoraError::file("data.csv", "is not a CSV"))
    })
    .unwrap_err();
    assert!(matches!(err, LoraError::File { .. }), "{err:?}");
    assert_eq!(ran.get(), 1, "the sweep stopped at the first failure");
}

fn png_ok(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG"))
}

#[test]
fn the_report_has_a_row_per_run_and_its_plots() {
    let dir = tempfile::tempdir().unwrap();
    let results = vec![result(&spec("r1", 1), 50.5), result(&spec("r4", 4), 60.25)];
    let rank = |r: &RunResult| match &r.spec.method {
        Method::Lora { rank, .. } => Some(*rank as f64),
        Method::FullFineTuning | Method::Mixed { .. } => None,
    };
    let path = write_report(dir.path(), "Ranks", "notes here", &results, Some(("rank r", &rank))).unwrap();
    let md = std::fs::read_to_string(path).unwrap();
    assert!(md.starts_with("# Ranks") && md.contains("notes here"));
    for (name, bleu) in [("r1", "50.50"), ("r4", "60.25")] {
        let row =
            md.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap_or_else(|| panic!("no row for {name}"));
        assert!(row.contains(bleu), "{row}");
    }
    assert!(md.contains("output 50.5"), "sample generations are shown");
    let table = std::fs::read_to_string(dir.path().join("table.md")).unwrap();
    assert!(md.contains(&table), "table.md is the report's table");
    for png in ["val_loss.png", "quality_vs_params.png", "quality_vs_x.png"] {
        assert!(png_ok(&dir.path().join(png)), "{png} missing or not a PNG");
    }
    assert!(write_report(dir.path(), "t", "", &[], None).is_err(), "an empty report is an error");
}

/// Full fine-tuning trains every weight: on a handful of examples the training loss falls, and
/// the validation history has one point per `eval_every` steps.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 2 code (causal_lm_loss, collate); graded by tests/t0*.rs")]
fn full_fine_tuning_lowers_the_loss() {
    use lora_from_scratch::models::load::{load_model, LoadOptions};
    let mut loaded = load_model("tests/fixtures/tiny-llama", &LoadOptions::default()).unwrap();
    let train = own_label_examples(3);
    let dir = tempfile::tempdir().unwrap();
    let cfg = train_config(dir.path(), 12, 4);
    let h = lora_from_scratch::experiments::full::train_full(loaded.model.as_mut(), &train, &train, 0, &cfg).unwrap();
    assert_eq!(h.train.len(), 12);
    assert_eq!(h.val.iter().map(|v| v.step).collect::<Vec<_>>(), vec![0, 4, 8, 12], "the start, then every 4 steps");
    let (first, last) = (h.train[0].loss, h.train[11].loss);
    assert!(last < 0.5 * first, "loss {first} -> {last}: full fine-tuning did not learn");
    let counts = lora_from_scratch::tasks::t03_inject::count_parameters(loaded.model.as_ref());
    assert_eq!(counts.trainable, counts.total, "every weight is trainable");
    assert!(dir.path().join("training_history.json").is_file());
}

/// The module names experiment 2 uses select exactly the intended layers on both architectures:
/// GPT-2 through its split c_attn slices, Llama by its projection names.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs the task 1 code (inject_lora); graded by tests/t0*.rs")]
fn experiment_module_names_select_the_intended_layers() {
    use lora_from_scratch::experiments::spec::ModuleNames;
    use lora_from_scratch::models::load::{load_model, LoadOptions};
    use lora_from_scratch::tasks::t03_inject::inject_lora;
    use lora_from_scratch::LoraConfig;
    for (fixture, gpt2) in [("tiny-gpt2", true), ("tiny-llama", false)] {
        let n = if gpt2 { ModuleNames::GPT2_SPLIT_QKV } else { ModuleNames::LLAMA };
        let mut all = vec![n.q, n.k, n.v, n.o];
        all.extend_from_slice(n.ffn);
        let per_layer = [(vec![n.q], 1), (vec![n.q, n.v], 2), (vec![n.q, n.k, n.v, n.o], 4), (all, 4 + n.ffn.len())];
        for (targets, expected) in per_layer {
            let opts = LoadOptions { split_qkv: gpt2, ..Default::default() };
            let mut loaded = load_model(&format!("tests/fixtures/{fixture}"), &opts).unwrap();
            let layers = loaded.model.linears().iter().filter(|(name, _)| name.ends_with(n.o)).count();
            let report = inject_lora(loaded.model.as_mut(), &LoraConfig::new(2, 4.0, &targets)).unwrap();
            let adapted = loaded.model.linears().iter().filter(|(_, s)| s.lora().is_some()).count();
            assert_eq!(adapted, expected * layers, "{fixture} {targets:?}: {report:?}");
        }
    }
}

/// Results written before QLoRA's fields existed still read, and their specs (no `base`) still
/// match the same run asked for again, so a cached sweep is not rerun.
#[test]
fn results_without_the_base_fields_still_load() {
    let s = spec("r8", 8);
    let mut json = serde_json::to_value(result(&s, 50.0)).unwrap();
    let obj = json.as_object_mut().unwrap();
    obj.remove("base_bytes");
    obj.remove("base_bytes_f32");
    assert!(json["spec"].get("base").is_none(), "an f32 run's spec is written without `base`");
    let back: RunResult = serde_json::from_value(json).unwrap();
    assert_eq!((back.base_bytes, back.spec.base.clone()), (0, None));
    assert_eq!(back.spec, s);
}
