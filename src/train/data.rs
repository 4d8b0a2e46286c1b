//! Datasets for fine-tuning: instruction records (Alpaca-style JSONL, and the embedded default
//! set), E2E NLG (the LoRA paper's GPT-2 task), prompt templates, and deterministic splits and
//! batch orders. Tokenization with label masking and batching are task 2.1 (`t05_data`).

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::{LoraError, Result};
use crate::models::tokenizer::{chat_ml_prompt, encode, smollm2_chat_prompt, ChatMessage, QWEN2_5_SYSTEM};
use crate::tasks::t05_data::{tokenize_example, Example};

/// One instruction and its answer, as Alpaca's JSON has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionRecord {
    pub instruction: String,
    /// Extra context for the instruction; often empty.
    #[serde(default)]
    pub input: String,
    pub output: String,
}

/// A prompt and the response the model should learn to write after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub prompt: String,
    pub response: String,
}

const EMBEDDED: &str = include_str!("../../data/ml_instructions.jsonl");

/// The default dataset: 153 questions and answers about machine learning, in English and Chinese.
pub fn embedded_instructions() -> Vec<InstructionRecord> {
    parse_jsonl(EMBEDDED, Path::new("data/ml_instructions.jsonl")).expect("the embedded dataset parses").records
}

/// Instruction records from a JSONL file (one object per line; blank lines skipped).
pub fn load_instructions(path: &Path) -> Result<Vec<InstructionRecord>> {
    Ok(read_instructions(path)?.records)
}

/// The records of a JSONL file, and how many blank lines it skipped (a count the user sees, so a
/// file cut into pieces by stray empty lines does not pass unnoticed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstructionFile {
    pub records: Vec<InstructionRecord>,
    pub blank_lines: usize,
}

/// Read a JSONL file of instruction records. A line that is not UTF-8 or not a record is an
/// error naming the file and the line.
pub fn read_instructions(path: &Path) -> Result<InstructionFile> {
    let bytes = std::fs::read(path).map_err(|e| LoraError::io(path, e))?;
    let mut lines = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|e| {
            let at = e.valid_up_to();
            LoraError::file(
                path,
                format!("line {}: not UTF-8 (byte {} of the line is 0x{:02x})", i + 1, at + 1, line[at]),
            )
        })?;
        lines.push(line);
    }
    parse_jsonl(&lines.join("\n"), path)
}

fn parse_jsonl(text: &str, path: &Path) -> Result<InstructionFile> {
    let mut records = Vec::new();
    let mut blank_lines = 0;
    // The last line of a file that ends in a newline is not a blank line of the file.
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(text).split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            blank_lines += 1;
            continue;
        }
        let r: InstructionRecord = serde_json::from_str(line).map_err(|e| {
            LoraError::file(
                path,
                format!("line {}: not an instruction record (instruction, input, output): {e}", i + 1),
            )
        })?;
        records.push(r);
    }
    if records.is_empty() {
        return Err(LoraError::file(path, "has no records"));
    }
    Ok(InstructionFile { records, blank_lines })
}

/// One E2E NLG pair: a meaning representation and one human reference text for it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct E2eRecord {
    pub mr: String,
    #[serde(rename = "ref")]
    pub reference: String,
}

/// E2E NLG pairs from the official CSV (`mr,ref` header), e.g. `data/e2e/devset.csv`.
pub fn load_e2e(path: &Path) -> Result<Vec<E2eRecord>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| LoraError::file(path, format!("cannot be read: {e}")))?;
    let mut out = Vec::new();
    for (i, row) in reader.deserialize().enumerate() {
        out.push(row.map_err(|e| LoraError::file(path, format!("row {}: expected columns mr,ref: {e}", i + 2)))?);
    }
    if out.is_empty() {
        return Err(LoraError::file(path, "has no E2E rows"));
    }
    Ok(out)
}

/// The E2E prompt of `peft_e2e_task.py` for a meaning representation.
pub fn e2e_prompt(mr: &str) -> String {
    format!("Meaning representation: {mr}\nDescription:")
}

/// An E2E pair as (prompt, response): the response is the reference after a space.
pub fn e2e_sample(r: &E2eRecord) -> Sample {
    Sample { prompt: e2e_prompt(&r.mr), response: format!(" {}", r.reference) }
}

/// Split E2E pairs by meaning representation: every reference of one MR lands on the same side,
/// so validation measures MRs the model has not seen. `val_fraction` of the MRs, chosen by seed.
pub fn split_e2e_by_mr(records: &[E2eRecord], val_fraction: f64, seed: u64) -> (Vec<E2eRecord>, Vec<E2eRecord>) {
    let mut groups: BTreeMap<&str, Vec<&E2eRecord>> = BTreeMap::new();
    for r in records {
        groups.entry(&r.mr).or_default().push(r);
    }
    let mut mrs: Vec<&str> = groups.keys().copied().collect();
    mrs.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_val = ((mrs.len() as f64) * val_fraction).round() as usize;
    let (val_mrs, train_mrs) = mrs.split_at(n_val.min(mrs.len()));
    let take = |ms: &[&str]| ms.iter().flat_map(|m| groups[m].iter().map(|r| (*r).clone())).collect();
    (take(train_mrs), take(val_mrs))
}

/// Every reference of each MR, in first-seen order: the multi-reference sets BLEU scores against.
pub fn e2e_references(records: &[E2eRecord]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in records {
        match out.iter_mut().find(|(mr, _)| *mr == r.mr) {
            Some((_, refs)) => refs.push(r.reference.clone()),
            None => out.push((r.mr.clone(), vec![r.reference.clone()])),
        }
    }
    out
}

/// How an instruction becomes a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// SmolLM2-Instruct's chat template (ChatML), the format the model was tuned on.
    ChatMl,
    /// Qwen2 / Qwen2.5-Instruct's: the same ChatML, with Qwen's default system message.
    QwenChatMl,
    /// Mistral-Instruct's `<s>[INST] {request} [/INST]`.
    MistralInst,
    /// A plain Alpaca-style layout for base models such as GPT-2.
    Plain,
}

impl Template {
    /// The template for a model architecture (transformers' `model_type`): plain for GPT-2, each
    /// family's chat template for the Llama family's instruct models.
    pub fn for_architecture(arch: &str) -> Self {
        match arch {
            "gpt2" => Template::Plain,
            "qwen2" => Template::QwenChatMl,
            "mistral" => Template::MistralInst,
            _ => Template::ChatMl,
        }
    }

    /// The prompt for an instruction (without its answer).
    pub fn prompt(&self, instruction: &str, input: &str) -> String {
        let request = if input.is_empty() { instruction.to_string() } else { format!("{instruction}\n\n{input}") };
        match self {
            Template::ChatMl => smollm2_chat_prompt(&[ChatMessage::new("user", &request)], true),
            Template::QwenChatMl => chat_ml_prompt(&[ChatMessage::new("user", &request)], QWEN2_5_SYSTEM, true),
            Template::MistralInst => format!("<s>[INST] {request} [/INST]"),
            Template::Plain => format!("### Instruction:\n{request}\n\n### Response:\n"),
        }
    }

    /// A record as a (prompt, response) pair.
    pub fn sample(&self, r: &InstructionRecord) -> Sample {
        Sample { prompt: self.prompt(&r.instruction, &r.input), response: r.output.clone() }
    }
}

/// What tokenizing a dataset cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Truncation {
    pub examples_cut: usize,
    pub tokens_cut: usize,
    /// Examples cut before their answer: nothing of them is trained on.
    pub examples_without_answer: usize,
    /// The longest example before truncation (prompt, answer and end token).
    pub longest: usize,
}

/// Tokenize samples into training examples (task 2.1's `tokenize_example`), at most `max_len`
/// tokens each, reporting what truncation cut. When truncation leaves no example anything to
/// train on, the error says so and suggests a `max_len` that keeps the longest whole.
pub fn encode_samples(
    tok: &Tokenizer,
    samples: &[Sample],
    eos_id: u32,
    max_len: usize,
) -> Result<(Vec<Example>, Truncation)> {
    if samples.is_empty() {
        return Err(LoraError::input("dataset", "is empty"));
    }
    let mut cut = Truncation::default();
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let e = tokenize_example(&encode(tok, &s.prompt)?, &encode(tok, &s.response)?, eos_id, max_len)?;
        cut.longest = cut.longest.max(e.input_ids.len() + e.truncated);
        if e.truncated > 0 {
            cut.examples_cut += 1;
            cut.tokens_cut += e.truncated;
        }
        if e.labels.iter().all(|&l| l == crate::tasks::t05_data::IGNORE_INDEX) {
            cut.examples_without_answer += 1;
        }
        out.push(e);
    }
    if cut.examples_without_answer == samples.len() {
        return Err(LoraError::config(
            "max_len (--max-len)",
            format!(
                "{max_len} tokens cut all {} examples before their answer, so there are no supervised tokens \
                 to train on; the longest example has {} tokens: try --max-len {}",
                samples.len(),
                cut.longest,
                cut.longest.div_ceil(64) * 64
            ),
        ));
    }
    Ok((out, cut))
}

/// The batches of one epoch: indices `0..n` shuffled by `(seed, epoch)` and cut into batches of
/// `batch_size` (the last may be smaller). The same arguments always give the same order, which
/// is what lets an interrupted run resume exactly.
pub fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch as u64)));
    idx.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Every position the forward passes of the training steps `steps` (0-based) ran over: the
/// micro-batches in the training loop's order (t06: micro-batch `m = step * grad_accum + k` is
/// batch `m % per_epoch` of epoch `m / per_epoch`), each padded to its longest example. Prompt,
/// answer and padding together: what `bench_smollm2`'s tokens/s counts (batch x sequence), where
/// the training loop's own `tokens` counts the supervised (answer) tokens only.
pub fn positions_in_steps(
    examples: &[Example],
    batch_size: usize,
    grad_accum: usize,
    seed: u64,
    steps: std::ops::Range<usize>,
) -> usize {
    let accum = grad_accum.max(1);
    let per_epoch = epoch_batches(examples.len(), batch_size, seed, 0).len().max(1);
    let (mut total, mut epoch) = (0, None);
    for micro in steps.start * accum..steps.end * accum {
        // One shuffle per epoch, not one per micro-batch.
        let e = micro / per_epoch;
        if epoch.as_ref().is_none_or(|(at, _)| *at != e) {
            epoch = Some((e, epoch_batches(examples.len(), batch_size, seed, e)));
        }
        let Some(batch) = epoch.as_ref().and_then(|(_, batches)| batches.get(micro % per_epoch)) else { continue };
        let longest = batch.iter().map(|&i| examples[i].input_ids.len()).max().unwrap_or(0);
        total += batch.len() * longest;
    }
    total
}

/// Split any list into (train, validation) by seed: `val_fraction` of the items go to validation.
pub fn split<T: Clone>(items: &[T], val_fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let mut idx: Vec<usize> = (0..items.len()).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_val = ((items.len() as f64) * val_fraction).round() as usize;
    let val = idx[..n_val].iter().map(|&i| items[i].clone()).collect();
    let train = idx[n_val..].iter().map(|&i| items[i].clone()).collect();
    (train, val)
}

/// The E2E NLG task as every run here uses it: the records split by meaning representation
/// (no MR in both halves), each half encoded, and the validation MRs with all their references
/// for BLEU.
pub struct E2eTask {
    pub train_records: Vec<E2eRecord>,
    pub val_records: Vec<E2eRecord>,
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    /// (MR, references) of the validation half.
    pub val_refs: Vec<(String, Vec<String>)>,
    pub truncation: Truncation,
}

impl E2eTask {
    /// Load `csv`, split 10 % of the MRs off for validation by `seed`, and encode both halves.
    pub fn load(csv: &Path, tok: &Tokenizer, eos_id: u32, max_len: usize, seed: u64) -> Result<Self> {
        let records = load_e2e(csv)?;
        let (train_records, val_records) = split_e2e_by_mr(&records, 0.1, seed);
        let samples = |rs: &[E2eRecord]| rs.iter().map(e2e_sample).collect::<Vec<Sample>>();
        let (train, truncation) = encode_samples(tok, &samples(&train_records), eos_id, max_len)?;
        let (val, _) = encode_samples(tok, &samples(&val_records), eos_id, max_len)?;
        let val_refs = e2e_references(&val_records);
        Ok(E2eTask { train_records, val_records, train, val, val_refs, truncation })
    }

    /// Write the split as `e2e_train.csv` and `e2e_val.csv` (mr,ref) into `dir`, so that
    /// `../shared/bench/peft_e2e_task.py` can train on exactly the same one.
    pub fn write_csvs(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
        for (name, rows) in [("e2e_train.csv", &self.train_records), ("e2e_val.csv", &self.val_records)] {
            let path = dir.join(name);
            let mut w = csv::Writer::from_writer(Vec::new());
            let err = |e: csv::Error| LoraError::file(&path, format!("cannot write CSV: {e}"));
            w.write_record(["mr", "ref"]).map_err(err)?;
            for r in rows.iter() {
                w.write_record([&r.mr, &r.reference]).map_err(err)?;
            }
            let bytes = w.into_inner().map_err(|e| LoraError::file(&path, format!("cannot write CSV: {e}")))?;
            crate::io::write_atomic(&path, &bytes)?;
        }
        Ok(())
    }
}
