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
    /// `en` or `zh`; default: LORA_LANG, else LC_ALL / LC_MESSAGES / LANG (`zh_CN.UTF-8` gives Chinese).
    #[arg(long, value_parser = Lang::parse)]
    lang: Option<Lang>,
}

/// The few sentences this program says, in both languages.
struct Words {
    building: &'static str,
    not_compiling: &'static str,
    progress: &'static str,
    tasks_done: &'static str,
    graders_pass: &'static str,
    next: &'static str,
    hints_for: &'static str,
    task: &'static str,
    exercise: &'static str,
    book: &'static str,
    grade: &'static str,
    hint: &'static str,
    more: &'static str,
    all_done: &'static str,
}

const EN: Words = Words {
    building: "Building the graders against your exercises...",
    not_compiling: "\nYour exercises do not compile yet: fix the errors above, then run this again.",
    progress: "Progress",
    tasks_done: "tasks done",
    graders_pass: "graders pass",
    next: "Next",
    hints_for: "Hints for",
    task: "task",
    exercise: "exercise:",
    book: "book:    ",
    grade: "grade:   ",
    hint: "hint",
    more: "more:    ",
    all_done: "Every task is done. Well done! Compare your code with solutions/ and read on in the book.",
};

const ZH: Words = Words {
    building: "正在用你的练习编译评分测试……",
    not_compiling: "\n你的练习还不能编译：先修好上面的错误，再运行一次。",
    progress: "进度",
    tasks_done: "个任务已完成",
    graders_pass: "项评分通过",
    next: "下一个",
    hints_for: "任务提示",
    task: "任务",
    exercise: "练习：",
    book: "书：  ",
    grade: "评分：",
    hint: "提示",
    more: "更多：",
    all_done: "所有任务都完成了，干得好！把你的代码和 solutions/ 对照一下，再接着读书的后面几章。",
};

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
fn describe(task: &Task, heading: &str, level: usize, chosen: bool, lang: Lang, words: &Words) {
    // The challenges are "task ch. N" in English, 挑战 N in Chinese.
    let label = match (lang, task.number.strip_prefix("ch. ")) {
        (Lang::Zh, Some(n)) => format!("挑战 {n}"),
        _ => format!("{} {}", words.task, task.number),
    };
    println!("\n{heading}: {} ({label}): {}", task.name, task.title_in(lang));
    println!("  {} {}", words.exercise, task.exercise());
    println!("  {} {}", words.book, task.chapter_in(lang));
    // The graders' pointer into the book follows LORA_LANG or the locale, not this flag.
    let env_prefix = if lang == Lang::from_env() { String::new() } else { format!("LORA_LANG={} ", lang.code()) };
    println!("  {} {env_prefix}{}", words.grade, task.grade_command());
    let hints = task.hints_in(lang);
    let shown = level.clamp(1, hints.len());
    for (i, hint) in hints.iter().take(shown).enumerate() {
        println!("  {} {}/{}: {hint}", words.hint, i + 1, hints.len());
    }
    if shown < hints.len() {
        let task_flag = if chosen { format!(" --task {}", task.name) } else { String::new() };
        // The flag only when the environment would not choose the same language by itself.
        let lang_flag = if lang == Lang::from_env() { String::new() } else { format!(" --lang {}", lang.code()) };
        println!("  {} cargo run --example progress -- --hint {}{task_flag}{lang_flag}", words.more, shown + 1);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let lang = args.lang.unwrap_or_else(Lang::from_env);
    let words = match lang {
        Lang::En => &EN,
        Lang::Zh => &ZH,
    };
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
    let done = results.iter().filter(|(p, t)| *t > 0 && p == t).count();
    println!("\n{}: {} {done}/{} {}\n", words.progress, bar(done, TASKS.len(), 30), TASKS.len(), words.tasks_done);
    for (task, (passed, total)) in TASKS.iter().zip(&results) {
        let mark = if *total > 0 && passed == total { "done" } else { "todo" };
        println!(
            "  {mark}  {:<22} {:>3}/{:<3} {}   {}",
            task.name,
            passed,
            total,
            words.graders_pass,
            task.title_in(lang)
        );
    }
    let next = TASKS.iter().zip(&results).find(|(_, (p, t))| *t == 0 || p != t).map(|(task, _)| task);
    match (chosen, next) {
        (Some(task), _) => describe(task, words.hints_for, args.hint, true, lang, words),
        (None, Some(task)) => describe(task, words.next, args.hint, false, lang, words),
        (None, None) => println!("\n{}", words.all_done),
    }
    ExitCode::SUCCESS
}
