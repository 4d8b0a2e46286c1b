//! The ordered list of the tutorial's tasks, after rustlings' `info.toml`: the one place that
//! says which tasks exist, in which order, and where their four files are; their hints, text in
//! two languages, are data beside it (`hints.toml`). A test checks it
//! against the files on disk, and `cargo run --example progress` walks it.

use super::lang::Lang;

/// One task of the tutorial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// `tNN_name`: the file name in exercises/, solutions/, tests/ and book/src/.
    pub name: &'static str,
    /// The source tutorial's numbering ("1.1").
    pub number: &'static str,
    /// What the task builds.
    pub title: &'static str,
    /// The title in Chinese, for a reader of the Chinese book (`book/zh/`).
    pub title_zh: &'static str,
}

/// The hints of every task, a data file beside this one (as rustlings keeps its hints in
/// `info.toml`): `[task] en = [...] zh = [...]`.
const HINTS_FILE: &str = include_str!("hints.toml");

/// One task's hints in both languages, as the data file holds them.
#[derive(serde::Deserialize)]
struct Hints {
    en: Vec<String>,
    zh: Vec<String>,
}

/// The data file, parsed once. It is compiled in and checked by `tests/tasks_manifest.rs`, so a
/// parse error here is a bug in this repository, not a user's mistake.
fn all_hints() -> &'static std::collections::BTreeMap<String, Hints> {
    static HINTS: std::sync::OnceLock<std::collections::BTreeMap<String, Hints>> = std::sync::OnceLock::new();
    HINTS.get_or_init(|| toml::from_str(HINTS_FILE).unwrap_or_else(|e| panic!("src/tasks/hints.toml: {e}")))
}

/// The task names the hints file has, in its order of names: for checking it against [`TASKS`].
pub fn hinted_tasks() -> Vec<&'static str> {
    all_hints().keys().map(String::as_str).collect()
}

impl Task {
    /// The stub the learner fills in.
    pub fn exercise(&self) -> String {
        format!("exercises/{}.rs", self.name)
    }

    /// The reference implementation.
    pub fn solution(&self) -> String {
        format!("solutions/{}.rs", self.name)
    }

    /// The grader, also the name of the cargo test target.
    pub fn test(&self) -> String {
        format!("tests/{}.rs", self.name)
    }

    /// The book chapter.
    pub fn chapter(&self) -> String {
        self.chapter_in(Lang::En)
    }

    /// The book chapter in the edition of `lang`.
    pub fn chapter_in(&self, lang: Lang) -> String {
        format!("{}/{}.md", lang.book_dir(), self.name)
    }

    /// The title in `lang`.
    pub(crate) fn title_in(&self, lang: Lang) -> &'static str {
        match lang {
            Lang::En => self.title,
            Lang::Zh => self.title_zh,
        }
    }

    /// The hints in `lang` for a learner who is stuck, in levels: a nudge (where to look), the
    /// key idea, then nearly the answer (`src/tasks/hints.toml`). `cargo run --example progress
    /// -- --hint N` shows the first N. Empty for a task the file does not have (a test forbids it).
    pub fn hints_in(&self, lang: Lang) -> &'static [String] {
        match all_hints().get(self.name) {
            Some(h) => match lang {
                Lang::En => &h.en,
                Lang::Zh => &h.zh,
            },
            None => &[],
        }
    }

    /// The command that grades this task.
    pub(crate) fn grade_command(&self) -> String {
        format!("cargo test --features exercises --test {}", self.name)
    }
}

/// Every task, in the order a learner does them.
pub const TASKS: &[Task] = &[
    Task {
        name: "t01_lora_layer",
        number: "1.1",
        title: "LoraLayer: A [r, in], B [out, r], scaling alpha / r",
        title_zh: "LoraLayer：A [r, in]、B [out, r]，缩放因子 alpha / r",
    },
    Task {
        name: "t02_linear_with_lora",
        number: "1.2",
        title: "LinearWithLora: a frozen base layer plus the adapter",
        title_zh: "LinearWithLora：冻结的基座层加上适配器",
    },
    Task {
        name: "t03_inject",
        number: "1.3",
        title: "inject_lora and the helpers that inspect an adapted model",
        title_zh: "inject_lora 以及检查已适配模型的辅助函数",
    },
    Task {
        name: "t04_save_load",
        number: "1.4",
        title: "Adapters as PEFT's keyed tensors and back; save_lora_weights / load_lora_weights",
        title_zh: "把适配器转成 PEFT 的带键张量并转回来；save_lora_weights / load_lora_weights",
    },
    Task {
        name: "t05_data",
        number: "2.1",
        title: "Training examples: label masking, truncation, padding and batching",
        title_zh: "训练样本：标签掩码、截断、填充与组批",
    },
    Task {
        name: "t06_train",
        number: "2.2",
        title: "Training: schedule, clipping, the causal LM loss, the loop over a Trainee, checkpoints",
        title_zh: "训练：学习率调度、梯度裁剪、因果语言模型的损失、基于 Trainee 的训练循环、检查点",
    },
    Task {
        name: "t07_eval",
        number: "2.3",
        title: "evaluate_generation, perplexity and corpus BLEU",
        title_zh: "evaluate_generation、困惑度与语料级 BLEU",
    },
    Task {
        name: "t08_merge",
        number: "3.1-3.2",
        title: "merge_lora_weights, unmerge_lora_weights and verify_merge",
        title_zh: "合并与验证：merge_lora_weights、unmerge_lora_weights 与 verify_merge",
    },
    Task {
        name: "t09_qlora",
        number: "ch. 1",
        title: "QLoRA: the NF4 code book, blockwise quantization with double quantization",
        title_zh: "QLoRA：NF4 码本、分块量化与双重量化",
    },
    Task {
        name: "t10_multi_lora",
        number: "ch. 2",
        title: "Several adapters on one base: switching, combining, a batch of many adapters",
        title_zh: "一个基座上的多个适配器：切换、组合、一个批次里的多个适配器",
    },
    Task {
        name: "t11_mixed",
        number: "ch. 3",
        title: "LoRA mixed with full fine-tuning: modules_to_save, learning-rate groups, PEFT's format",
        title_zh: "LoRA 与全量微调混合：modules_to_save、学习率分组、PEFT 格式",
    },
];
