//! What a run is measured by besides its loss: corpus BLEU of greedy E2E generations, and the
//! peak resident memory of the process.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{LoraError, Result};
use crate::inference::generate::GenerateOptions;
use crate::models::CausalLm;
use crate::tasks::t07_eval::{corpus_bleu, evaluate_generation, Generated};

/// Greedy generations for E2E meaning representations `mrs` (with their references), scored with
/// corpus BLEU-4; the generations are written to `out` (JSONL). Each output is cut at its first
/// line, as the E2E references are one sentence.
pub fn e2e_bleu(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    mrs: &[(String, Vec<String>)],
    gen: &GenerateOptions,
    out: &Path,
) -> Result<(f64, Vec<Generated>)> {
    let prompts: Vec<(String, Vec<String>)> =
        mrs.iter().map(|(mr, refs)| (crate::train::data::e2e_prompt(mr), refs.clone())).collect();
    let first_line = |t: &str| t.lines().next().unwrap_or("").trim().to_string();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LoraError::io(dir, e))?;
    }
    let generated = evaluate_generation(model, tok, &prompts, gen, &first_line, out)?;
    let hyps: Vec<String> = generated.iter().map(|g| g.output.clone()).collect();
    let refs: Vec<Vec<String>> = generated.iter().map(|g| g.references.clone()).collect();
    Ok((corpus_bleu(&hyps, &refs), generated))
}

/// Reset the kernel's peak-RSS mark of this process, so the next [`peak_rss_mib`] covers one run
/// of a sweep (Linux; elsewhere the peak stays the process's). The heap's free memory goes back
/// to the OS first: [`crate::compute::alloc::keep_freed_memory`] keeps it mapped, and the mark restarts
/// from what is mapped.
pub fn reset_peak_rss() {
    crate::compute::alloc::release_free_memory();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process since start or the last [`reset_peak_rss`] (MiB).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}
