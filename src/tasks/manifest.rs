//! The ordered list of the tutorial's tasks, after rustlings' `info.toml`: the one place that
//! says which tasks exist, in which order, and where their four files are. A test checks it
//! against the files on disk, and `cargo run --example progress` walks it.

/// One task of the tutorial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// `tNN_name`: the file name in exercises/, solutions/, tests/ and book/src/.
    pub name: &'static str,
    /// The source tutorial's numbering ("1.1").
    pub number: &'static str,
    /// What the task builds.
    pub title: &'static str,
    /// A first hint for a learner who is stuck.
    pub hint: &'static str,
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
        format!("book/src/{}.md", self.name)
    }

    /// The command that grades this task.
    pub fn grade_command(&self) -> String {
        format!("cargo test --features exercises --test {}", self.name)
    }
}

/// Every task, in the order a learner does them.
pub const TASKS: &[Task] = &[
    Task {
        name: "t01_lora_layer",
        number: "1.1",
        title: "LoraLayer: A [r, in], B [out, r], scaling alpha / r",
        hint: "Start with lora_scaling, then new (A random, B zeros), then forward as (x A^T) B^T * scaling.",
    },
    Task {
        name: "t02_linear_with_lora",
        number: "1.2",
        title: "LinearWithLora: a frozen base layer plus the adapter",
        hint: "detach() the base weight and bias in new; forward is linear_forward(x, W, b) + lora.forward(x).",
    },
    Task {
        name: "t03_inject",
        number: "1.3",
        title: "inject_lora and the helpers that inspect an adapted model",
        hint: "Write target_matches and find_target_modules first; inject_lora checks everything before \
               it replaces any slot.",
    },
    Task {
        name: "t04_save_load",
        number: "1.4",
        title: "Adapters as PEFT's keyed tensors and back; save_lora_weights / load_lora_weights",
        hint: "Keys come from peft::format::peft_key; in load_lora_tensors collect every TensorProblem before \
               touching the model.",
    },
    Task {
        name: "t05_data",
        number: "2.1",
        title: "Training examples: label masking, truncation, padding and batching",
        hint: "Labels are IGNORE_INDEX over the prompt and the padding; the EOS token is trained on.",
    },
    Task {
        name: "t06_train",
        number: "2.2",
        title: "Training: schedule, clipping, the causal LM loss, the loop over a Trainee, checkpoints",
        hint: "Start with lr_at and clip_grad_norm; in causal_lm_loss position t predicts the label at t + 1.",
    },
    Task {
        name: "t07_eval",
        number: "2.3",
        title: "evaluate_generation, perplexity and corpus BLEU",
        hint: "Perplexity is exp of the token-weighted mean loss; BLEU clips each n-gram count by the references.",
    },
    Task {
        name: "t08_merge",
        number: "3.1-3.2",
        title: "merge_lora_weights, unmerge_lora_weights and verify_merge",
        hint: "The update is scaling * B A, shaped like W; check every merged weight before replacing any slot.",
    },
    Task {
        name: "t09_qlora",
        number: "ch. 1",
        title: "QLoRA: the NF4 code book, blockwise quantization with double quantization",
        hint: "Start with nf4_code_book from normal_quantile, then nearest_level; quantize block by block of 64.",
    },
    Task {
        name: "t10_multi_lora",
        number: "ch. 2",
        title: "Several adapters on one base: switching, combining, a batch of many adapters",
        hint:
            "per_row_lora is two batched matmuls after index_select; set_active builds every slot before changing any.",
    },
    Task {
        name: "t11_mixed",
        number: "ch. 3",
        title: "LoRA mixed with full fine-tuning: modules_to_save, learning-rate groups, PEFT's format",
        hint: "Match module names by suffix as PEFT does; the adapter half of a file still goes through t04.",
    },
];
