//! mdBook renders an `{{#include file:anchor}}` whose file or anchor is missing as an empty block,
//! without failing. This test fails instead: every include in both editions of the book
//! (book/src, English, and book/zh/src, Chinese) must name an existing file and, if it names an
//! anchor, an anchor with code between its markers. The other rules here hold in both editions
//! too; tests/book_parity.rs checks that the two say the same.

use std::fs;
use std::path::{Path, PathBuf};

use lora_from_scratch::tasks::lang::{heading_in, Lang};

/// Both editions: the folder of the chapters and the heading of a task chapter's last section.
const EDITIONS: [(Lang, &str); 2] = [(Lang::En, "Grade it"), (Lang::Zh, "评分")];

fn book_dir(lang: Lang) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(lang.book_dir())
}

fn includes(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("{{#include ") {
        let after = &rest[start + "{{#include ".len()..];
        let end = after.find("}}").expect("an {{#include has no closing }}");
        out.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    out
}

fn anchored(source: &str, anchor: &str) -> Option<String> {
    let begin = format!("ANCHOR: {anchor}");
    let end = format!("ANCHOR_END: {anchor}");
    let lines: Vec<&str> = source.lines().collect();
    let a = lines.iter().position(|l| l.trim_start().starts_with("//") && l.trim().ends_with(&begin))?;
    let b = lines.iter().position(|l| l.trim_start().starts_with("//") && l.trim().ends_with(&end))?;
    (a < b).then(|| lines[a + 1..b].join("\n"))
}

#[test]
fn every_book_include_resolves_to_code() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for src in EDITIONS.map(|(lang, _)| book_dir(lang)) {
        for entry in fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "md") {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap();
            for inc in includes(&text) {
                checked += 1;
                let (file, anchor) = match inc.split_once(':') {
                    Some((f, a)) => (f, Some(a)),
                    None => (inc.as_str(), None),
                };
                let target = src.join(file);
                let Ok(code) = fs::read_to_string(&target) else {
                    problems.push(format!("{}: includes {file}, which does not exist", path.display()));
                    continue;
                };
                if let Some(anchor) = anchor {
                    match anchored(&code, anchor) {
                        Some(body) if !body.trim().is_empty() => {}
                        _ => problems
                            .push(format!("{}: anchor `{anchor}` in {file} is missing or empty", path.display())),
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "broken book includes:\n{}", problems.join("\n"));
    assert!(checked > 0, "the book includes no code at all; was book/src moved?");
}

/// Graders point a failing learner to a book section with `book("chapter", "Heading")`; every such
/// pointer must name a `## Heading` that exists in `book/src/chapter.md`, and one that the
/// Chinese chapter has at the same place (where a Chinese locale's pointer goes).
#[test]
fn every_grader_points_to_a_real_book_section() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    let mut problems = Vec::new();
    for entry in fs::read_dir(root.join("tests")).unwrap() {
        let path = entry.unwrap().path();
        // Skip this file, whose doc comment shows the pattern.
        if path.extension().is_none_or(|e| e != "rs") || path.file_name().is_some_and(|n| n == "book_includes.rs") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for call in text.split("book(\"").skip(1) {
            let Some((chapter, rest)) = call.split_once("\", \"") else { continue };
            let Some((heading, _)) = rest.split_once("\")") else { continue };
            checked += 1;
            let md = fs::read_to_string(root.join("book/src").join(format!("{chapter}.md"))).unwrap_or_default();
            if !md.lines().any(|l| l.trim() == format!("## {heading}")) {
                problems.push(format!("{}: book/src/{chapter}.md has no section \"{heading}\"", path.display()));
            } else if heading_in(root, Lang::Zh, chapter, heading).is_none() {
                // A reader with a Chinese locale is pointed at the same section of book/zh/src.
                problems.push(format!("{}: book/zh/src/{chapter}.md has no section for \"{heading}\"", path.display()));
            }
        }
    }
    assert!(problems.is_empty(), "graders point to missing book sections:\n{}", problems.join("\n"));
    assert!(checked > 0, "no grader points to the book");
}

fn chapters(lang: Lang) -> Vec<(String, String)> {
    let src = book_dir(lang);
    let mut out: Vec<(String, String)> = fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read_to_string(&p).unwrap()))
        .collect();
    out.sort();
    out
}

/// The targets of markdown links and images, `[text](target)` and `![alt](target)`, outside code.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        for part in line.split("](").skip(1) {
            if let Some(end) = part.find(')') {
                out.push(part[..end].to_string());
            }
        }
    }
    out
}

/// "Code from compiled files only": every Rust listing in the book is a single include of a file
/// that the build compiles (or a test runs), never code typed into the chapter.
#[test]
fn every_rust_listing_is_an_include() {
    let mut problems = Vec::new();
    let mut listings = 0;
    for (name, text) in EDITIONS.iter().flat_map(|(lang, _)| chapters(*lang)) {
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            let fence = line.trim_start();
            if !fence.starts_with("```rust") {
                continue;
            }
            listings += 1;
            let body: Vec<&str> = lines.by_ref().take_while(|l| !l.trim_start().starts_with("```")).collect();
            let ok = body.len() == 1 && body[0].trim().starts_with("{{#include ") && body[0].trim().ends_with("}}");
            if !ok {
                problems.push(format!(
                    "{name}: a ```rust listing holds typed code, not one {{{{#include}}}}:\n{}",
                    body.join("\n")
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(listings > 0, "the book has no Rust listings at all");
}

/// mdBook does not fail on a link to a chapter or image that is not there; this test does.
/// Every chapter must also be reachable from SUMMARY.md, or mdBook leaves it out of the book.
#[test]
fn every_link_resolves_and_every_chapter_is_in_the_summary() {
    let mut problems = Vec::new();
    for (lang, _) in EDITIONS {
        let src = book_dir(lang);
        let summary = fs::read_to_string(src.join("SUMMARY.md")).unwrap();
        let listed = link_targets(&summary);
        for (name, text) in chapters(lang) {
            if name != "SUMMARY.md" && !listed.contains(&name) {
                problems.push(format!("{name} is not in SUMMARY.md"));
            }
            for target in link_targets(&text) {
                if target.starts_with("http://") || target.starts_with("https://") {
                    continue;
                }
                let file = target.split('#').next().unwrap();
                if !file.is_empty() && !src.join(file).is_file() {
                    problems.push(format!("{name}: links to {target}, which is not in {}", lang.book_dir()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Each task's chapter exists, is in the book, and ends with the command that grades the task
/// and what passing looks like: as many passed tests as its grader has.
#[test]
fn every_task_chapter_ends_with_its_grading_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut tasks = 0;
    for (lang, grade_it) in EDITIONS {
        let dir = lang.book_dir();
        let summary = fs::read_to_string(root.join(dir).join("SUMMARY.md")).unwrap();
        for entry in fs::read_dir(root.join("tests")).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let is_task = stem.len() > 4 && stem.starts_with('t') && stem[1..3].chars().all(|c| c.is_ascii_digit());
            if !is_task || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            tasks += 1;
            let graders = fs::read_to_string(&path).unwrap().matches("#[test]").count();
            let chapter = format!("{stem}.md");
            let Ok(text) = fs::read_to_string(root.join(dir).join(&chapter)) else {
                problems.push(format!("{stem} has a grader but no {dir}/{chapter}"));
                continue;
            };
            if !summary.contains(&format!("({chapter})")) {
                problems.push(format!("{chapter} is not in SUMMARY.md"));
            }
            let last = text.rsplit("\n## ").next().unwrap_or("");
            let command = format!("cargo test --features exercises --test {stem}");
            let passing = format!("test result: ok. {graders} passed; 0 failed");
            if !(last.starts_with(grade_it) && last.contains(&command) && last.contains(&passing)) {
                problems.push(format!(
                    "{dir}/{chapter}: the last section must be \"## {grade_it}\" with `{command}` and `{passing}`"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(tasks >= 16, "found only {tasks} task graders");
}

/// A chapter teaches before it asks and never hands over the answer in the reading flow: in a
/// task chapter, code from `solutions/` appears only after "## Grade it", folded in a
/// `<details>` block that the reader opens on purpose.
#[test]
fn solution_code_appears_only_folded_after_grade_it() {
    let mut problems = Vec::new();
    let mut folded = 0;
    for (lang, grade_it_heading) in EDITIONS {
        for (name, text) in chapters(lang) {
            let is_task = name.len() > 4 && name.starts_with('t') && name[1..3].chars().all(|c| c.is_ascii_digit());
            if !is_task {
                continue;
            }
            let name = format!("{}/{name}", lang.book_dir());
            let grade_it = text.find(&format!("\n## {grade_it_heading}\n")).unwrap_or(text.len());
            let (mut open, mut seen_details) = (false, false);
            for (offset, line) in text.match_indices('\n').map(|(i, _)| i + 1).zip(text.lines().skip(1)) {
                let l = line.trim();
                if l.starts_with("<details") {
                    // Only a fold after "Grade it" hides a solution; one opened earlier does not count.
                    open = offset > grade_it;
                    seen_details |= open;
                } else if l.starts_with("</details>") {
                    open = false;
                } else if l.contains("{{#") && l.contains("solutions/") {
                    if offset < grade_it {
                        problems.push(format!("{name}: solution code before \"## Grade it\": {l}"));
                    } else if !open {
                        problems
                            .push(format!("{name}: solution code after \"## Grade it\" but not inside <details>: {l}"));
                    } else {
                        folded += 1;
                    }
                }
            }
            if !seen_details {
                problems.push(format!("{name}: no folded \"Reference solution\" block"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(folded >= 22, "only {folded} folded solution listings");
}
