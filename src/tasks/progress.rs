//! What `cargo run --example progress` prints, as strings: the table of tasks with how many of
//! their graders pass, and the next task's files, book chapter, grading command and hints. Kept
//! apart from the program that runs the graders, so that the text a learner reads is snapshot-tested
//! (`tests/learner_output.rs`): a change to it is a reviewed diff.

use std::fmt::Write;

use super::lang::Lang;
use super::manifest::{Task, TASKS};

/// The few sentences this program says, in both languages.
pub struct Words {
    pub building: &'static str,
    pub not_compiling: &'static str,
    pub progress: &'static str,
    pub tasks_done: &'static str,
    pub graders_pass: &'static str,
    pub next: &'static str,
    pub hints_for: &'static str,
    pub task: &'static str,
    pub exercise: &'static str,
    pub book: &'static str,
    pub grade: &'static str,
    pub hint: &'static str,
    pub more: &'static str,
    pub all_done: &'static str,
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

/// The words of `lang`.
pub fn words(lang: Lang) -> &'static Words {
    match lang {
        Lang::En => &EN,
        Lang::Zh => &ZH,
    }
}

fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = done * width / total.max(1);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// Whether a task is done: it has graders and all of them pass.
fn is_done((passed, total): (usize, usize)) -> bool {
    total > 0 && passed == total
}

/// The progress bar and one line per task, from `(passed, total)` graders per task in manifest
/// order.
pub fn table(results: &[(usize, usize)], lang: Lang) -> String {
    let words = words(lang);
    let done = results.iter().filter(|r| is_done(**r)).count();
    let mut out =
        format!("{}: {} {done}/{} {}\n\n", words.progress, bar(done, TASKS.len(), 30), TASKS.len(), words.tasks_done);
    for (task, &(passed, total)) in TASKS.iter().zip(results) {
        let mark = if is_done((passed, total)) { "done" } else { "todo" };
        let _ = writeln!(
            out,
            "  {mark}  {:<22} {:>3}/{:<3} {}   {}",
            task.name,
            passed,
            total,
            words.graders_pass,
            task.title_in(lang)
        );
    }
    out
}

/// The first task not done, if any.
pub fn next_task(results: &[(usize, usize)]) -> Option<&'static Task> {
    TASKS.iter().zip(results).find(|(_, r)| !is_done(**r)).map(|(task, _)| task)
}

/// A task's files, grading command and hints up to `level`, under `heading`; `chosen` when
/// `--task` named it, so that the command for the next hint names it too. `env_lang` is the
/// language the environment (LORA_LANG, the locale) picks: a command names `--lang` only where it
/// differs.
pub fn describe(task: &Task, heading: &str, level: usize, chosen: bool, lang: Lang, env_lang: Lang) -> String {
    let words = words(lang);
    let mut out = String::new();
    // The challenges are "task ch. N" in English, 挑战 N in Chinese.
    let label = match (lang, task.number.strip_prefix("ch. ")) {
        (Lang::Zh, Some(n)) => format!("挑战 {n}"),
        _ => format!("{} {}", words.task, task.number),
    };
    let _ = writeln!(out, "{heading}: {} ({label}): {}", task.name, task.title_in(lang));
    let _ = writeln!(out, "  {} {}", words.exercise, task.exercise());
    let _ = writeln!(out, "  {} {}", words.book, task.chapter_in(lang));
    // The graders' pointer into the book follows LORA_LANG or the locale, not this flag.
    let env_prefix = if lang == env_lang { String::new() } else { format!("LORA_LANG={} ", lang.code()) };
    let _ = writeln!(out, "  {} {env_prefix}{}", words.grade, task.grade_command());
    let hints = task.hints_in(lang);
    let shown = level.max(1).min(hints.len());
    for (i, hint) in hints.iter().take(shown).enumerate() {
        let _ = writeln!(out, "  {} {}/{}: {hint}", words.hint, i + 1, hints.len());
    }
    if shown < hints.len() {
        let task_flag = if chosen { format!(" --task {}", task.name) } else { String::new() };
        // The flag only when the environment would not choose the same language by itself.
        let lang_flag = if lang == env_lang { String::new() } else { format!(" --lang {}", lang.code()) };
        let _ = writeln!(
            out,
            "  {} cargo run --example progress -- --hint {}{task_flag}{lang_flag}",
            words.more,
            shown + 1
        );
    }
    out
}
