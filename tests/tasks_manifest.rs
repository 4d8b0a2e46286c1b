//! The tasks manifest (`src/tasks.rs`) and the files on disk must agree: a task without its four
//! files, or task files without a manifest entry, fail here.

use std::collections::BTreeSet;
use std::path::Path;

use lora_from_scratch::tasks::lang::Lang;
use lora_from_scratch::tasks::manifest::TASKS;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_task_has_its_four_files() {
    let mut missing = Vec::new();
    for task in TASKS {
        for file in [task.exercise(), task.solution(), task.test(), task.chapter()] {
            if !root().join(&file).is_file() {
                missing.push(format!("{}: {file}", task.name));
            }
        }
    }
    assert!(missing.is_empty(), "tasks in src/tasks.rs without their files:\n{}", missing.join("\n"));
}

#[test]
fn every_task_file_is_in_the_manifest_in_order() {
    let names: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "tasks must be listed in tNN order");
    let listed: BTreeSet<&str> = names.into_iter().collect();
    for dir in ["exercises", "solutions", "tests", "book/src"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let file = entry.unwrap().file_name().to_string_lossy().to_string();
            let stem = file.rsplit_once('.').map_or(file.as_str(), |(s, _)| s);
            let is_task = stem.len() > 4 && stem.starts_with('t') && stem[1..3].chars().all(|c| c.is_ascii_digit());
            assert!(
                !is_task || listed.contains(stem),
                "{dir}/{file} is a task file, but src/tasks.rs has no task {stem}"
            );
        }
    }
}

#[test]
fn the_book_lists_every_task_chapter() {
    let summary = std::fs::read_to_string(root().join("book/src/SUMMARY.md")).unwrap();
    for task in TASKS {
        assert!(
            summary.contains(&format!("({}.md)", task.name)),
            "book/src/SUMMARY.md has no chapter for {}",
            task.name
        );
    }
}

/// The hints file (src/tasks/hints.toml) has a section for every task and none for a task that
/// does not exist: a renamed task cannot lose its hints silently.
#[test]
fn the_hints_file_names_exactly_the_tasks() {
    let mut want: Vec<&str> = TASKS.iter().map(|t| t.name).collect();
    want.sort();
    assert_eq!(lora_from_scratch::tasks::manifest::hinted_tasks(), want);
}

/// Hints come in levels, from a nudge to nearly the answer: two or three per task, each longer
/// than the one before, and the first points to a section of the task's chapter by its heading.
#[test]
fn every_task_has_hints_in_levels_that_point_into_its_chapter() {
    for task in TASKS {
        let hints = task.hints_in(Lang::En);
        let n = hints.len();
        assert!((2..=3).contains(&n), "{}: {n} hints, expected 2 or 3", task.name);
        for pair in hints.windows(2) {
            assert!(pair[1].len() > pair[0].len(), "{}: a later hint says less than the one before", task.name);
        }
        let chapter = std::fs::read_to_string(root().join(task.chapter())).unwrap();
        let headings: Vec<&str> = chapter.lines().filter_map(|l| l.strip_prefix("## ")).collect();
        let quoted: Vec<&str> = hints[0].split('"').skip(1).step_by(2).collect();
        assert!(
            quoted.iter().any(|q| headings.contains(q)),
            "{}: the first hint should name a section of {} in quotes, one of {headings:?}",
            task.name,
            task.chapter()
        );
    }
}

/// The Chinese titles and hints match the English ones level for level: as many hints, each
/// longer than the last, written in Chinese, and the first names a section of the Chinese
/// chapter (book/zh/src) by its heading, in 「」.
#[test]
fn every_task_has_chinese_hints_that_point_into_its_chinese_chapter() {
    let han = |s: &str| s.chars().filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c)).count();
    for task in TASKS {
        assert!(han(task.title_zh) >= 2, "{}: title_zh {:?} is not Chinese", task.name, task.title_zh);
        let hints = task.hints_in(Lang::Zh);
        assert_eq!(
            hints.len(),
            task.hints_in(Lang::En).len(),
            "{}: {} Chinese hints for {} English",
            task.name,
            hints.len(),
            task.hints_in(Lang::En).len()
        );
        for (i, hint) in hints.iter().enumerate() {
            assert!(han(hint) >= 10, "{}: Chinese hint {} is not Chinese: {hint}", task.name, i + 1);
        }
        for pair in hints.windows(2) {
            assert!(pair[1].chars().count() > pair[0].chars().count(), "{}: a later Chinese hint says less", task.name);
        }
        let chapter = std::fs::read_to_string(root().join(task.chapter_in(Lang::Zh))).unwrap();
        let headings: Vec<&str> = chapter.lines().filter_map(|l| l.strip_prefix("## ")).collect();
        let quoted: Vec<&str> = hints[0].split(['「', '」']).skip(1).step_by(2).collect();
        assert!(
            quoted.iter().any(|q| headings.contains(q)),
            "{}: the first Chinese hint should name a section of {} in 「」, one of {headings:?}",
            task.name,
            task.chapter_in(Lang::Zh)
        );
    }
}
