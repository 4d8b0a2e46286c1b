//! The learner's language. The book exists in English (`book/src/`) and Chinese (`book/zh/src/`),
//! chapter for chapter with the same headings in the same order (`tests/book_parity.rs` holds
//! them to it). The progress command's titles and hints and the graders' pointer into the book
//! follow the reader's locale; the library's error messages stay English.

use std::path::Path;

/// Which edition of the book, and of the learner-facing messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// English, the default.
    En,
    /// Simplified Chinese (`zh_CN`, or any locale that starts with `zh`).
    Zh,
}

impl Lang {
    /// The language of the locale: Chinese when it starts with `zh` (`zh_CN.UTF-8`, `zh_TW`, `zh`).
    fn from_locale(locale: &str) -> Lang {
        if locale.trim().to_ascii_lowercase().starts_with("zh") {
            Lang::Zh
        } else {
            Lang::En
        }
    }

    /// The reader's language: `LORA_LANG` (`zh` or `en`) when it is set, which works the same on
    /// every system and for the graders as for the progress command; otherwise the locale, which
    /// POSIX decides by `LC_ALL`, then `LC_MESSAGES`, then `LANG`: the first of them that is set
    /// and not empty.
    pub fn from_env() -> Lang {
        if let Some(lang) = std::env::var("LORA_LANG").ok().and_then(|v| Lang::parse(&v).ok()) {
            return lang;
        }
        let locale = ["LC_ALL", "LC_MESSAGES", "LANG"]
            .iter()
            .filter_map(|key| std::env::var(key).ok())
            .find(|value| !value.is_empty())
            .unwrap_or_default();
        Lang::from_locale(&locale)
    }

    /// A `--lang` value: `en` or `zh` (a locale such as `zh_CN` also works).
    pub fn parse(value: &str) -> Result<Lang, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            v if v.starts_with("zh") => Ok(Lang::Zh),
            v if v.starts_with("en") => Ok(Lang::En),
            _ => Err(format!("--lang {value}: expected `en` or `zh`")),
        }
    }

    /// The value `--lang` and `LORA_LANG` take for this language.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    /// The folder of this language's book chapters, relative to the repository root.
    pub fn book_dir(self) -> &'static str {
        match self {
            Lang::En => "book/src",
            Lang::Zh => "book/zh/src",
        }
    }
}

/// The headings of a markdown chapter, outside fenced code, as (level, text): `## Shapes` is
/// `(2, "Shapes")`. The two editions of a chapter have the same levels in the same order.
pub fn headings(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if in_code || level == 0 || !line[level..].starts_with(' ') {
            continue;
        }
        out.push((level, line[level..].trim().to_string()));
    }
    out
}

/// The heading of `lang`'s edition of a chapter that stands where `english` stands in the
/// English one (same position in the heading list), read from the book under `root`. `None`
/// when the English chapter has no such heading, or the other edition is missing or out of step.
pub fn heading_in(root: &Path, lang: Lang, chapter: &str, english: &str) -> Option<String> {
    let read = |dir: &str| std::fs::read_to_string(root.join(dir).join(format!("{chapter}.md"))).ok();
    let en = headings(&read(Lang::En.book_dir())?);
    let index = en.iter().position(|(_, text)| text == english)?;
    if lang == Lang::En {
        return Some(english.to_string());
    }
    let other = headings(&read(lang.book_dir())?);
    let (level, text) = other.get(index)?;
    (other.len() == en.len() && *level == en[index].0).then(|| text.clone())
}

/// The line a failing grader prints: where the book explains the property, in `lang`, falling
/// back to the English chapter when the other edition has no matching section.
pub fn book_pointer(root: &Path, lang: Lang, chapter: &str, english: &str) -> String {
    match (lang, heading_in(root, lang, chapter, english)) {
        (Lang::Zh, Some(zh)) => format!("书中讲解这一性质的地方：{}/{chapter}.md，「{zh}」一节", Lang::Zh.book_dir()),
        _ => format!("the book explains this property: book/src/{chapter}.md, section \"{english}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zh_locale_is_chinese_and_others_english() {
        for zh in ["zh_CN.UTF-8", "zh_TW", "zh", "ZH_cn"] {
            assert_eq!(Lang::from_locale(zh), Lang::Zh, "{zh}");
        }
        for en in ["", "C", "C.UTF-8", "en_US.UTF-8", "POSIX", "de_DE"] {
            assert_eq!(Lang::from_locale(en), Lang::En, "{en}");
        }
        assert_eq!(Lang::parse("zh"), Ok(Lang::Zh));
        assert_eq!(Lang::parse("en"), Ok(Lang::En));
        assert!(Lang::parse("fr").unwrap_err().contains("fr"));
    }

    #[test]
    fn headings_skip_code_and_keep_levels() {
        let md = "# T\n\ntext\n## A b\n```text\n# not a heading\n```\n### C\n#no-space\n";
        assert_eq!(headings(md), vec![(1, "T".into()), (2, "A b".into()), (3, "C".into())]);
    }

    #[test]
    fn a_heading_maps_to_the_one_at_the_same_place_in_the_other_edition() {
        let dir = std::env::temp_dir().join(format!("lang-test-{}", std::process::id()));
        for (sub, text) in [("book/src", "# T\n## One\n## Two\n"), ("book/zh/src", "# 题\n## 一\n## 二\n")] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join("c.md"), text).unwrap();
        }
        assert_eq!(heading_in(&dir, Lang::Zh, "c", "Two").as_deref(), Some("二"));
        assert_eq!(heading_in(&dir, Lang::Zh, "c", "Three"), None);
        assert!(book_pointer(&dir, Lang::Zh, "c", "One").contains("book/zh/src/c.md，「一」"));
        // Out of step (a heading missing in Chinese): the pointer falls back to English.
        std::fs::write(dir.join("book/zh/src/c.md"), "# 题\n## 一\n").unwrap();
        assert_eq!(heading_in(&dir, Lang::Zh, "c", "One"), None);
        assert!(book_pointer(&dir, Lang::Zh, "c", "One").contains("book/src/c.md, section \"One\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
