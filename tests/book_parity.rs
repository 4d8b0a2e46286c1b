//! The English book (`book/src/`) and the Chinese one (`book/zh/src/`) are one book in two
//! languages, and must not drift apart. For every chapter, both editions have:
//!
//! - the same chapters, listed in SUMMARY.md in the same order under the same number of parts;
//! - the same headings, level for level, in the same order (so a grader's pointer to a section
//!   maps to the other edition by position: `tasks::lang::heading_in`);
//! - the same fenced code blocks, byte for byte (comments in code stay English), and the same
//!   math;
//! - the same includes, resolved to the same file and anchor (the Chinese chapters are one folder
//!   deeper, so `../../solutions` there is `../../../solutions`);
//! - the same images, the same `<details>` folds, links to the same chapters, and anchors that
//!   name a heading of the linked chapter in the same edition;
//! - the same tables: as many, each with as many rows and columns, and the same numbers row by row;
//! - the same outline: paragraphs, list items (and their nesting), tables and HTML blocks in the
//!   same order, so that a paragraph or list item added to one edition only, as a block of its
//!   own, is found (a sentence added inside a paragraph is not: that is for review).
//!
//! A chapter changed in one language and not the other fails here, naming the chapter and what
//! differs; the planted tests at the end show that each rule fails when it should.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use lora_from_scratch::tasks::lang::{headings, Lang};

/// One edition: its folder relative to the repository root, and its markdown files by name.
struct Book {
    dir: &'static str,
    chapters: BTreeMap<String, String>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(lang: Lang) -> Book {
    let dir = lang.book_dir();
    let chapters = std::fs::read_dir(root().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    Book { dir, chapters }
}

/// Split markdown into prose lines and fenced code blocks (the fence lines included).
fn split_code(markdown: &str) -> (Vec<&str>, Vec<String>) {
    let (mut prose, mut blocks) = (Vec::new(), Vec::new());
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (None, true) => current = Some(vec![line]),
            (None, false) => prose.push(line),
            (Some(block), false) => block.push(line),
            (Some(block), true) => {
                block.push(line);
                blocks.push(block.join("\n"));
                current = None;
            }
        }
    }
    if let Some(block) = current {
        blocks.push(block.join("\n"));
    }
    (prose, blocks)
}

/// Every `start ... end` span of `text`, in order.
fn spans(text: &str, start: &str, end: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(start) {
        let after = &rest[i + start.len()..];
        let Some(j) = after.find(end) else { break };
        out.push(after[..j].to_string());
        rest = &after[j + end.len()..];
    }
    out
}

/// A path made from `base` and a relative `path`, with `..` and `.` resolved lexically.
fn normalize(base: &str, path: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in PathBuf::from(base).join(path).components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// The includes of a chapter as (file, anchor), the file named from the repository root. The
/// Chinese chapters include the English book's worked examples and tables
/// (`../../src/worked/t01_lora_layer.txt`): one file, shown by both editions.
fn includes(book: &Book, markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for directive in ["{{#include ", "{{#rustdoc_include "] {
        for inc in spans(markdown, directive, "}}") {
            let inc = inc.trim();
            let (file, anchor) = inc.split_once(':').unwrap_or((inc, ""));
            let path = normalize(book.dir, file);
            out.push(format!("{}{path}:{anchor}", directive.trim_start_matches("{{#")));
        }
    }
    out
}

/// A code block with each include's path written as `includes` names it, so that the two
/// editions' blocks compare equal when they include the same thing from their own folders.
fn canonical_code(book: &Book, block: &str) -> String {
    let mut out = String::new();
    let mut rest = block;
    while let Some(i) = rest.find("{{#") {
        let Some(j) = rest[i..].find("}}") else { break };
        out.push_str(&rest[..i]);
        match includes(book, &rest[i..i + j + 2]).pop() {
            Some(resolved) => out.push_str(&format!("{{{{#{resolved}}}}}")),
            None => out.push_str(&rest[i..i + j + 2]),
        }
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out
}

/// `![alt](target)` images and `[text](target)` links of the prose, as (is_image, target).
fn links(prose: &[&str]) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    for line in prose {
        let mut rest = *line;
        while let Some(i) = rest.find("](") {
            let image = rest[..i].rfind("![").is_some_and(|b| !rest[b..i].contains(']'));
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((image, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// mdBook's id of a heading: lowercased, spaces to `-`, only letters, digits, `-` and `_` kept.
fn heading_id(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The numbers written in a piece of text: `1,234.5`, `0.02`, `8`, `1e-4` (as `1`, `4`).
fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let joins =
            (c == '.' || c == ',') && !current.is_empty() && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c.is_ascii_digit() || joins {
            current.push(c);
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current).replace(',', ""));
        }
    }
    if !current.is_empty() {
        out.push(current.replace(',', ""));
    }
    out
}

/// The tables of the prose: for each, its rows as (number of cells, numbers in the row).
fn tables(prose: &[&str]) -> Vec<Vec<(usize, Vec<String>)>> {
    let mut out: Vec<Vec<(usize, Vec<String>)>> = Vec::new();
    let mut in_table = false;
    for line in prose {
        let row = line.trim();
        if row.starts_with('|') && row.ends_with('|') && row.len() > 1 {
            if !in_table {
                out.push(Vec::new());
                in_table = true;
            }
            // Cells split on `|`, not counting `\|` or a `|` inside inline code.
            let mut cells = 1;
            let mut code = false;
            let mut prev = ' ';
            for c in row[1..row.len() - 1].chars() {
                match c {
                    '`' => code = !code,
                    '|' if !code && prev != '\\' => cells += 1,
                    _ => {}
                }
                prev = c;
            }
            out.last_mut().unwrap().push((cells, numbers(row)));
        } else {
            in_table = false;
        }
    }
    out
}

/// Math in the prose: `\\( \\)`, `\\[ \\]` and `$$ $$` spans, in order.
fn math(prose: &[&str]) -> Vec<String> {
    let text = prose.join("\n");
    let mut out = spans(&text, "\\\\(", "\\\\)");
    out.extend(spans(&text, "\\\\[", "\\\\]"));
    out.extend(spans(&text, "$$", "$$"));
    out
}

/// The outline of a chapter's prose, block by block: `h` a heading, `p` a paragraph, `t` a table,
/// `x` an HTML block, `c` a code block, and `l<depth>` each list item (so a list with one item
/// more, or nested deeper, differs). A paragraph added to one edition only changes it.
fn outline(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut in_code, mut in_block) = (false, false);
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            if !in_code {
                out.push("c".to_string());
            }
            in_code = !in_code;
            in_block = false;
            continue;
        }
        if in_code {
            continue;
        }
        if trimmed.is_empty() {
            in_block = false;
            continue;
        }
        // A heading is a block of one line, as `lang::headings` reads it.
        if !headings(line).is_empty() {
            out.push("h".to_string());
            in_block = false;
            continue;
        }
        let numbered =
            trimmed.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered || trimmed.starts_with("- ") || trimmed.starts_with("* ") {
            out.push(format!("l{}", (line.len() - trimmed.len()) / 2));
            in_block = true;
            continue;
        }
        if !in_block {
            let html =
                ["<details", "</details", "<summary", "<div", "</div", "<!--"].iter().any(|t| trimmed.starts_with(t));
            out.push(
                if trimmed.starts_with('|') {
                    "t"
                } else if html {
                    "x"
                } else {
                    "p"
                }
                .to_string(),
            );
            in_block = true;
        }
    }
    out
}

/// Everything that differs between the two editions, one line each, naming chapter and rule.
fn differences(en: &Book, zh: &Book) -> Vec<String> {
    let mut problems = Vec::new();
    for name in en.chapters.keys().filter(|n| !zh.chapters.contains_key(*n)) {
        problems.push(format!("{name}: in {} but not in {}", en.dir, zh.dir));
    }
    for name in zh.chapters.keys().filter(|n| !en.chapters.contains_key(*n)) {
        problems.push(format!("{name}: in {} but not in {}", zh.dir, en.dir));
    }
    for (name, en_text) in &en.chapters {
        let Some(zh_text) = zh.chapters.get(name) else { continue };
        let mut differ = |what: &str, detail: String| problems.push(format!("{name}: {what} differ: {detail}"));

        let (hen, hzh) = (headings(en_text), headings(zh_text));
        let (len, lzh): (Vec<usize>, Vec<usize>) =
            (hen.iter().map(|h| h.0).collect(), hzh.iter().map(|h| h.0).collect());
        if len != lzh {
            let first = (0..hen.len().max(hzh.len())).find(|&i| hen.get(i).map(|h| h.0) != hzh.get(i).map(|h| h.0));
            let at = first.unwrap_or(0);
            differ(
                "the headings",
                format!(
                    "{} in English, {} in Chinese; first at #{}: {:?} / {:?}",
                    hen.len(),
                    hzh.len(),
                    at + 1,
                    hen.get(at),
                    hzh.get(at)
                ),
            );
        }

        let (oen, ozh) = (outline(en_text), outline(zh_text));
        if oen != ozh {
            let at = (0..oen.len().max(ozh.len())).find(|&i| oen.get(i) != ozh.get(i)).unwrap_or(0);
            differ(
                "the paragraphs, lists and blocks",
                format!(
                    "{} blocks in English, {} in Chinese; from block {} on: {} / {} \
                     (h heading, p paragraph, l list item, t table, c code, x html)",
                    oen.len(),
                    ozh.len(),
                    at + 1,
                    oen[at.min(oen.len())..].iter().take(6).cloned().collect::<Vec<_>>().join(" "),
                    ozh[at.min(ozh.len())..].iter().take(6).cloned().collect::<Vec<_>>().join(" ")
                ),
            );
        }

        let ((pen, cen), (pzh, czh)) = (split_code(en_text), split_code(zh_text));
        let (ien_code, izh_code) = (includes(en, &cen.join("\n")), includes(zh, &czh.join("\n")));
        let cen: Vec<String> = cen.iter().map(|b| canonical_code(en, b)).collect();
        let czh: Vec<String> = czh.iter().map(|b| canonical_code(zh, b)).collect();
        if cen != czh {
            let at = (0..cen.len().max(czh.len())).find(|&i| cen.get(i) != czh.get(i)).unwrap_or(0);
            differ(
                "the code blocks",
                format!(
                    "{} in English, {} in Chinese; block {} is\n{}\n---- in Chinese ----\n{}",
                    cen.len(),
                    czh.len(),
                    at + 1,
                    cen.get(at).map_or("(none)", |s| s),
                    czh.get(at).map_or("(none)", |s| s)
                ),
            );
        }

        let (ien, izh) = (includes(en, &pen.join("\n")), includes(zh, &pzh.join("\n")));
        if ien != izh || ien_code != izh_code {
            differ("the includes", format!("{:?} / {:?}", [ien, ien_code].concat(), [izh, izh_code].concat()));
        }

        let (men, mzh) = (math(&pen), math(&pzh));
        if men != mzh {
            differ("the math", format!("{men:?} / {mzh:?}"));
        }

        let (len_links, lzh_links) = (links(&pen), links(&pzh));
        let images = |l: &[(bool, String)]| l.iter().filter(|x| x.0).map(|x| x.1.clone()).collect::<Vec<_>>();
        if images(&len_links) != images(&lzh_links) {
            differ("the images", format!("{:?} / {:?}", images(&len_links), images(&lzh_links)));
        }
        // Links: the same chapters (and pages) in the same order in SUMMARY.md; elsewhere the
        // same ones in any order, since a sentence may name them in another order.
        let targets = |l: &[(bool, String)]| {
            let mut t: Vec<String> =
                l.iter().filter(|x| !x.0).map(|x| x.1.split('#').next().unwrap().to_string()).collect();
            if name != "SUMMARY.md" {
                t.sort();
            }
            t
        };
        if targets(&len_links) != targets(&lzh_links) {
            differ("the links", format!("{:?} / {:?}", targets(&len_links), targets(&lzh_links)));
        }

        let details = |t: &str| t.lines().filter(|l| l.trim_start().starts_with("<details")).count();
        if details(en_text) != details(zh_text) {
            differ("the <details> folds", format!("{} / {}", details(en_text), details(zh_text)));
        }

        let (ten, tzh) = (tables(&pen), tables(&pzh));
        if ten.len() != tzh.len() {
            differ("the tables", format!("{} in English, {} in Chinese", ten.len(), tzh.len()));
        }
        for (k, (a, b)) in ten.iter().zip(&tzh).enumerate() {
            if a.len() != b.len() {
                differ("a table's rows", format!("table {}: {} rows / {} rows", k + 1, a.len(), b.len()));
                continue;
            }
            for (r, (ra, rb)) in a.iter().zip(b).enumerate() {
                if ra != rb {
                    differ(
                        "a table's cells or numbers",
                        format!(
                            "table {}, row {}: {} cells {:?} / {} cells {:?}",
                            k + 1,
                            r + 1,
                            ra.0,
                            ra.1,
                            rb.0,
                            rb.1
                        ),
                    );
                }
            }
        }
    }
    problems
}

/// Links with an anchor, `chapter.md#id`, must name a heading of that chapter in the same
/// edition (mdBook does not check, and a Chinese heading has a Chinese id).
fn broken_anchors(book: &Book) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, text) in &book.chapters {
        for (_, target) in links(&split_code(text).0) {
            let Some((file, id)) = target.split_once('#') else { continue };
            if file.starts_with("http") {
                continue;
            }
            let file = if file.is_empty() { name.as_str() } else { file };
            let ids: Vec<String> = book
                .chapters
                .get(file)
                .map(|t| headings(t).iter().map(|h| heading_id(&h.1)).collect())
                .unwrap_or_default();
            if !ids.iter().any(|i| i == id) {
                problems
                    .push(format!("{}/{name}: the link {target} names no heading of {file} (ids: {ids:?})", book.dir));
            }
        }
    }
    problems
}

#[test]
fn the_two_books_have_the_same_structure() {
    let (en, zh) = (load(Lang::En), load(Lang::Zh));
    assert!(en.chapters.len() >= 20, "the English book has only {} chapters", en.chapters.len());
    let problems = differences(&en, &zh);
    assert!(
        problems.is_empty(),
        "the English and Chinese books differ ({} problems); change both editions together:\n\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

/// The anchor links of a book, in order, as (chapter, linked file, index of the heading named).
fn anchor_targets(book: &Book) -> Vec<(String, String, Option<usize>)> {
    let mut out = Vec::new();
    for (name, text) in &book.chapters {
        for (_, target) in links(&split_code(text).0) {
            let Some((file, id)) = target.split_once('#') else { continue };
            if file.starts_with("http") {
                continue;
            }
            let file = if file.is_empty() { name.clone() } else { file.to_string() };
            let index = book.chapters.get(&file).and_then(|t| headings(t).iter().position(|h| heading_id(&h.1) == id));
            out.push((name.clone(), file, index));
        }
    }
    out
}

#[test]
fn every_anchor_link_names_a_heading_in_its_own_edition() {
    let (en, zh) = (load(Lang::En), load(Lang::Zh));
    let problems: Vec<String> = [&en, &zh].into_iter().flat_map(broken_anchors).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // And the same section in both: a heading's place in its chapter is the same in both books.
    assert_eq!(anchor_targets(&en), anchor_targets(&zh), "anchor links name different sections in the two books");
}

/// Prose blocks (paragraphs and list items) of the Chinese book that hold 25 or more Latin
/// letters and not one Chinese character, once code, math and link targets are taken out:
/// English left untranslated.
fn untranslated(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = vec![String::new()];
    for line in split_code(text).0 {
        let trimmed = line.trim_start();
        let starts_item = trimmed.starts_with("- ")
            || trimmed.split_once(". ").is_some_and(|(n, _)| n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty());
        if trimmed.is_empty() || trimmed.starts_with('|') || trimmed.starts_with("{{#") || starts_item {
            blocks.push(String::new());
        }
        if !trimmed.starts_with('|') && !trimmed.starts_with("{{#") {
            let last = blocks.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    let strip = |mut text: String, open: &str, close: &str| {
        while let Some(i) = text.find(open) {
            let Some(j) = text[i + open.len()..].find(close) else { break };
            text.replace_range(i..i + open.len() + j + close.len(), " ");
        }
        text
    };
    blocks
        .into_iter()
        .filter(|block| {
            let mut t = strip(block.clone(), "\\\\(", "\\\\)");
            t = strip(t, "\\\\[", "\\\\]");
            t = strip(t, "`", "`");
            t = strip(t, "](", ")");
            let latin = t.chars().filter(|c| c.is_ascii_alphabetic()).count();
            let han = t.chars().filter(|c| ('\u{4e00}'..='\u{9fff}').contains(c)).count();
            latin >= 25 && han == 0
        })
        .map(|b| b.trim().chars().take(100).collect())
        .collect()
}

#[test]
fn the_chinese_book_is_chinese() {
    // A paragraph copied in English and never translated would pass every structural rule.
    let zh = load(Lang::Zh);
    let mut problems = Vec::new();
    for (name, text) in &zh.chapters {
        for block in untranslated(text) {
            problems.push(format!("{}/{name}: not translated: {block}", zh.dir));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Planted: an English paragraph in the Chinese t01 chapter is found.
    let planted = format!(
        "{}\n\nThis paragraph was copied from the English chapter and never translated.\n",
        zh.chapters["t01_lora_layer.md"]
    );
    assert_eq!(untranslated(&planted).len(), 1);
}

/// The Chinese edition shows the English book's figures, as byte-identical copies (mdBook serves
/// only what is under a book's own `src/`): a figure redrawn in one book only fails here.
#[test]
fn the_chinese_book_shows_the_english_figures() {
    let zh = load(Lang::Zh);
    let mut checked = 0;
    let mut problems = Vec::new();
    for (name, text) in &zh.chapters {
        for (_, target) in links(&split_code(text).0).into_iter().filter(|l| l.0) {
            checked += 1;
            let (en_file, zh_file) = (root().join("book/src").join(&target), root().join("book/zh/src").join(&target));
            match (std::fs::read(&en_file), std::fs::read(&zh_file)) {
                (Ok(a), Ok(b)) if a == b => {}
                _ => problems.push(format!("{}/{name}: {target} differs from the English figure or is missing; run `cp book/src/{target} book/zh/src/{target}`", zh.dir)),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(checked >= 8, "only {checked} figures in the Chinese book");
}

// Planted differences: each must be found, and named.

fn planted(change: impl FnOnce(&mut Book)) -> Vec<String> {
    let (en, mut zh) = (load(Lang::En), load(Lang::Zh));
    assert!(differences(&en, &zh).is_empty(), "the books differ before anything is planted");
    change(&mut zh);
    differences(&en, &zh)
}

fn edit(book: &mut Book, chapter: &str, from: &str, to: &str) {
    let text = book.chapters.get_mut(chapter).unwrap();
    assert!(text.contains(from), "{chapter} has no {from:?} to plant a change in");
    *text = text.replacen(from, to, 1);
}

#[test]
fn a_chapter_removed_from_one_book_is_found() {
    let problems = planted(|zh| {
        zh.chapters.remove("t05_data.md");
    });
    assert!(problems.iter().any(|p| p.starts_with("t05_data.md: in book/src but not in book/zh/src")), "{problems:?}");
}

#[test]
fn an_include_changed_in_one_book_is_found() {
    let problems = planted(|zh| {
        edit(zh, "t01_lora_layer.md", "worked/t01_lora_layer.txt", "worked/t02_linear_with_lora.txt");
    });
    assert!(problems.iter().any(|p| p.starts_with("t01_lora_layer.md: the includes differ")), "{problems:?}");
    let problems = planted(|zh| {
        let text = zh.chapters.get_mut("t02_linear_with_lora.md").unwrap();
        let anchor = text.find("{{#include ../../../solutions/t02_linear_with_lora.rs:").unwrap();
        text.insert(anchor + "{{#include ../../../solutions/t02_linear_with_lora.rs:".len(), 'x');
    });
    assert!(problems.iter().any(|p| p.starts_with("t02_linear_with_lora.md: the includes differ")), "{problems:?}");
}

#[test]
fn a_heading_code_table_or_order_change_in_one_book_is_found() {
    let problems = planted(|zh| edit(zh, "t01_lora_layer.md", "\n## ", "\n### "));
    assert!(problems.iter().any(|p| p.starts_with("t01_lora_layer.md: the headings differ")), "{problems:?}");
    let problems = planted(|zh| edit(zh, "t03_inject.md", "cargo test --features exercises", "cargo test"));
    assert!(problems.iter().any(|p| p.starts_with("t03_inject.md: the code blocks differ")), "{problems:?}");
    // A number in the last table row of the prose that has one, one digit changed.
    let problems = planted(|zh| {
        let text = zh.chapters.get_mut("end_to_end.md").unwrap();
        let prose = split_code(text).0;
        let row = prose.iter().rev().find(|l| l.starts_with('|') && l.contains(|c: char| c.is_ascii_digit())).unwrap();
        let at = text.rfind(row).unwrap() + row.find(|c: char| c.is_ascii_digit()).unwrap();
        let digit = text.as_bytes()[at];
        text.replace_range(at..at + 1, if digit == b'9' { "8" } else { "9" });
    });
    assert!(problems.iter().any(|p| p.starts_with("end_to_end.md: a table's cells or numbers differ")), "{problems:?}");
    let problems = planted(|zh| {
        let text = zh.chapters.get_mut("SUMMARY.md").unwrap();
        *text = text
            .replacen("(t01_lora_layer.md)", "(TMP)", 1)
            .replacen("(t02_linear_with_lora.md)", "(t01_lora_layer.md)", 1)
            .replacen("(TMP)", "(t02_linear_with_lora.md)", 1);
    });
    assert!(problems.iter().any(|p| p.starts_with("SUMMARY.md: the links differ")), "{problems:?}");
}

#[test]
fn a_paragraph_or_list_item_added_to_one_book_is_found() {
    // A paragraph written in English only (here: added to the Chinese chapter) moves no heading,
    // code block or number, but changes the outline.
    let problems = planted(|zh| edit(zh, "t06_train.md", "\n## ", "\n新加的一段，英文版没有。\n\n## "));
    assert!(
        problems.iter().any(|p| p.starts_with("t06_train.md: the paragraphs, lists and blocks differ")),
        "{problems:?}"
    );
    let problems = planted(|zh| {
        let text = zh.chapters.get_mut("t01_lora_layer.md").unwrap();
        let item = text.find("\n1. ").expect("t01 has a numbered list");
        text.insert_str(item, "\n- 多出来的一项");
    });
    assert!(
        problems.iter().any(|p| p.starts_with("t01_lora_layer.md: the paragraphs, lists and blocks differ")),
        "{problems:?}"
    );
}

#[test]
fn the_helpers_read_markdown_as_md_book_does() {
    assert_eq!(
        numbers("r (576 + 576) = 9,216 at 1.3x, 0.02 and 1e-4."),
        ["576", "576", "9216", "1.3", "0.02", "1", "4"]
    );
    assert_eq!(heading_id("candle 里「冻结」是什么意思"), "candle-里冻结是什么意思");
    assert_eq!(heading_id("What freezing means in candle"), "what-freezing-means-in-candle");
    assert_eq!(normalize("book/zh/src", "../../../solutions/t01.rs"), "solutions/t01.rs");
    assert_eq!(normalize("book/src", "../../solutions/t01.rs"), "solutions/t01.rs");
    assert_eq!(
        outline(
            "# T\n\nA para\ngraph.\n\n- one\n  - two\n1. three\n\n| a |\n|---|\n\n```text\nx\n\ny\n```\n<details>\n"
        ),
        ["h", "p", "l0", "l1", "l0", "t", "c", "x"]
    );
    let t = tables(&["| a | `x|y` | 3 |", "|---|---|---|", "| 1,000 | b \\| c | 2.5 |", "", "| z |"]);
    assert_eq!(t.len(), 2);
    assert_eq!(t[0][0], (3, vec!["3".to_string()]));
    assert_eq!(t[0][2], (3, vec!["1000".to_string(), "2.5".to_string()]));
}
