//! Where am I? Runs every task's graders against your exercises, in order, and names the next
//! task to do with its files, book chapter and a hint.
//!
//! `cargo run --example progress`: the table and the next task, with its first hint
//! `cargo run --example progress -- --hint 2`: the next task's hints up to level 2 (of 3)
//! `cargo run --example progress -- --hint 3 --task t03_inject`: another task's hints
//! `cargo run --example progress -- --lang zh`: in Chinese (also when `LORA_LANG=zh`, or the
//! locale, `LC_ALL` / `LC_MESSAGES` / `LANG`, starts with `zh`), with the Chinese book's chapters
//!
//! The graders are compiled once (`cargo test --features exercises --no-run`) and each test
//! binary is then run directly, so checking all tasks costs one build.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use lora_from_scratch::tasks::lang::Lang;
use lora_from_scratch::tasks::manifest::TASKS;
use lora_from_scratch::tasks::progress::{describe, next_task, table, words};

#[derive(Parser, Debug)]
#[command(about = "Grade every task and name the next one, with hints in levels")]
struct Args {
    /// Show the hints up to this level (1: a nudge, 2: the key idea, 3: nearly the answer).
    #[arg(long, default_value_t = 1)]
    hint: usize,
    /// The task whose hints to show (its name, `t03_inject`, or number, `t03`); default: the next.
    #[arg(long)]
    task: Option<String>,
    /// `en` or `zh`; default: LORA_LANG, else LC_ALL / LC_MESSAGES / LANG (`zh_CN.UTF-8` gives Chinese).
    #[arg(long, value_parser = Lang::parse)]
    lang: Option<Lang>,
}

/// Build every task's grader with `--features exercises` and return the test binaries, in
/// manifest order. `None` if the build fails (cargo has printed why).
fn build_graders(root: &Path) -> Option<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `cargo run` gives this program the package's own variables (CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR, ...). Some build scripts (ring's) ask to rerun when those change, and
    // cargo compares them with its own environment, so an inner cargo that inherited them would
    // rebuild those crates, and the next `cargo run` rebuild them back: a minute per call. Since
    // the package has a build script, `cargo run` sets OUT_DIR too, which ring's build script
    // reads.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(root).args([
        "test",
        "--features",
        "exercises",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for task in TASKS {
        cmd.args(["--test", task.name]);
    }
    let out = cmd.stderr(Stdio::inherit()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mut found = vec![None; TASKS.len()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) else { continue };
        if let Some(i) = TASKS.iter().position(|t| t.name == name) {
            found[i] = Some(PathBuf::from(exe));
        }
    }
    found.into_iter().collect()
}

/// (passed, total) of one grader binary, from libtest's closing line.
fn run_grader(exe: &Path) -> (usize, usize) {
    let out = Command::new(exe).output().expect("a test binary cargo just built");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with("test result:")).unwrap_or("");
    let count = |word: &str| {
        line.split(';')
            .find(|part| part.trim_end().ends_with(word))
            .and_then(|part| part.split_whitespace().rev().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let passed = count("passed");
    (passed, passed + count("failed"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let lang = args.lang.unwrap_or_else(Lang::from_env);
    let words = words(lang);
    let chosen = match &args.task {
        Some(name) => match TASKS.iter().find(|t| t.name == name || t.name.split('_').next() == Some(name)) {
            Some(task) => Some(task),
            None => {
                let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
                eprintln!("--task {name}: no such task; the tasks are {}", names.join(", "));
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if args.hint == 0 {
        eprintln!("--hint 0: hints are numbered from 1 (a nudge) to 3 (nearly the answer)");
        return ExitCode::FAILURE;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("{}", words.building);
    let Some(binaries) = build_graders(root) else {
        eprintln!("{}", words.not_compiling);
        return ExitCode::FAILURE;
    };
    let results: Vec<(usize, usize)> = binaries.iter().map(|exe| run_grader(exe)).collect();
    print!("\n{}", table(&results, lang));
    let env = Lang::from_env();
    match (chosen, next_task(&results)) {
        (Some(task), _) => print!("\n{}", describe(task, words.hints_for, args.hint, true, lang, env)),
        (None, Some(task)) => print!("\n{}", describe(task, words.next, args.hint, false, lang, env)),
        (None, None) => println!("\n{}", words.all_done),
    }
    ExitCode::SUCCESS
}
