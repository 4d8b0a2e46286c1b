//! Where am I? Runs every task's graders against your exercises, in order, and names the next
//! task to do with its files, book chapter and a hint.
//!
//! `cargo run --example progress`: the table and the next task, with its first hint
//! `cargo run --example progress -- --hint 2`: the next task's hints up to level 2 (of 3)
//! `cargo run --example progress -- --hint 3 --task t03_inject`: another task's hints
//!
//! The graders are compiled once (`cargo test --features exercises --no-run`) and each test
//! binary is then run directly, so checking all tasks costs one build.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use lora_from_scratch::tasks::manifest::{Task, TASKS};

#[derive(Parser, Debug)]
#[command(about = "Grade every task and name the next one, with hints in levels")]
struct Args {
    /// Show the hints up to this level (1: a nudge, 2: the key idea, 3: nearly the answer).
    #[arg(long, default_value_t = 1)]
    hint: usize,
    /// The task whose hints to show (its name, `t03_inject`, or number, `t03`); default: the next.
    #[arg(long)]
    task: Option<String>,
}

/// Build every task's grader with `--features exercises` and return the test binaries, in
/// manifest order. `None` if the build fails (cargo has printed why).
fn build_graders(root: &Path) -> Option<Vec<PathBuf>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `cargo run` gives this program the package's own variables (CARGO_PKG_NAME,
    // CARGO_MANIFEST_DIR, ...). Some build scripts (ring's) ask to rerun when those change, and
    // cargo compares them with its own environment, so an inner cargo that inherited them would
    // rebuild those crates, and the next `cargo run` rebuild them back: a minute per call.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE"].contains(&key.as_ref())
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

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = done * width / total.max(1);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// A task's files, grading command and hints up to `level`; `chosen` when `--task` named it, so
/// that the command for the next hint names it too.
fn describe(task: &Task, heading: &str, level: usize, chosen: bool) {
    println!("\n{heading}: {} (task {}): {}", task.name, task.number, task.title);
    println!("  exercise: {}", task.exercise());
    println!("  book:     {}", task.chapter());
    println!("  grade:    {}", task.grade_command());
    let shown = level.clamp(1, task.hints.len());
    for (i, hint) in task.hints.iter().take(shown).enumerate() {
        println!("  hint {}/{}: {hint}", i + 1, task.hints.len());
    }
    if shown < task.hints.len() {
        let task_flag = if chosen { format!(" --task {}", task.name) } else { String::new() };
        println!("  more:     cargo run --example progress -- --hint {}{task_flag}", shown + 1);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    println!("Building the graders against your exercises...");
    let Some(binaries) = build_graders(root) else {
        eprintln!("\nYour exercises do not compile yet: fix the errors above, then run this again.");
        return ExitCode::FAILURE;
    };
    let results: Vec<(usize, usize)> = binaries.iter().map(|exe| run_grader(exe)).collect();
    let done = results.iter().filter(|(p, t)| *t > 0 && p == t).count();
    println!("\nProgress: {} {done}/{} tasks done\n", bar(done, TASKS.len(), 30), TASKS.len());
    for (task, (passed, total)) in TASKS.iter().zip(&results) {
        let mark = if *total > 0 && passed == total { "done" } else { "todo" };
        println!("  {mark}  {:<22} {:>3}/{:<3} graders pass   {}", task.name, passed, total, task.title);
    }
    let next = TASKS.iter().zip(&results).find(|(_, (p, t))| *t == 0 || p != t).map(|(task, _)| task);
    match (chosen, next) {
        (Some(task), _) => describe(task, "Hints for", args.hint, true),
        (None, Some(task)) => describe(task, "Next", args.hint, false),
        (None, None) => {
            println!("\nEvery task is done. Well done! Compare your code with solutions/ and read on in the book.")
        }
    }
    ExitCode::SUCCESS
}
