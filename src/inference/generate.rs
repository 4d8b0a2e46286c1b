//! Text generation with a KV cache: greedy decoding or sampling with temperature, top-k and
//! top-p (Holtzman et al. 2019), seeded so a run can be repeated.
//!
//! The prompt is fed once; after that each step feeds only the newest token, and the model's
//! [`KvCache`](crate::models::KvCache) supplies the keys and values of everything before it.
//!
//! Picking the token is candle-transformers' [`LogitsProcessor`], the sampler candle's own
//! examples use: [`Sampling`] is turned into its `Sampling` variants by `Sampling::to_candle`.
//! One difference from transformers' `generate` to know: with both top-k and top-p, candle
//! measures p against the probabilities before the top-k cut (transformers renormalises the k
//! kept tokens first), so the same p keeps as many or more tokens here.

use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling as CandleSampling};
use tokenizers::Tokenizer;

use crate::error::{LoraError, Result};
use crate::models::tokenizer;
use crate::models::CausalLm;

/// How the next token is picked. `temperature <= 0` is greedy (the most likely token).
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Sampling {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        Sampling { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
    }

    /// candle-transformers' variant for these settings: `ArgMax` when greedy, else `All`,
    /// `TopK`, `TopP` or `TopKThenTopP` at this temperature. A top-k of 0 keeps one token; a
    /// top-p outside (0, 1) keeps every token, as candle reads it.
    fn to_candle(&self) -> CandleSampling {
        let temperature = self.temperature;
        if temperature <= 0.0 {
            return CandleSampling::ArgMax;
        }
        let p = self.top_p.filter(|p| *p > 0.0 && *p < 1.0);
        match (self.top_k.map(|k| k.max(1)), p) {
            (None, None) => CandleSampling::All { temperature },
            (Some(k), None) => CandleSampling::TopK { k, temperature },
            (None, Some(p)) => CandleSampling::TopP { p, temperature },
            (Some(k), Some(p)) => CandleSampling::TopKThenTopP { k, p, temperature },
        }
    }

    /// A sampler for these settings, seeded with `seed`.
    pub fn processor(&self) -> LogitsProcessor {
        LogitsProcessor::from_sampling(self.seed, self.to_candle())
    }
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop when one of these is produced (it is not included in the output).
    pub stop_ids: Vec<u32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id (end of sequence) was produced.
    Eos,
    /// `max_new_tokens` were produced.
    Budget,
    /// The model's context is full (GPT-2's 1024 positions, SmolLM2's 8192).
    Context,
}

/// The new token ids and why generation stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub stop: StopReason,
}

/// Continue `prompt` with up to `opts.max_new_tokens` tokens.
pub fn generate(model: &dyn CausalLm, prompt: &[u32], opts: &GenerateOptions) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(LoraError::input("prompt", "is empty; generation needs at least one token"));
    }
    let mut sampler = opts.sampling.processor();
    let mut cache = model.new_cache();
    let mut ids = Vec::new();
    let mut input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let max_pos = model.max_positions().unwrap_or(usize::MAX);
    let mut pos = prompt.len();
    while ids.len() < opts.max_new_tokens {
        let logits = model.forward(&input, Some(&mut cache), false)?;
        let last = logits.squeeze(0)?.get(input.dim(1)? - 1)?;
        let next = pick(&last, &mut sampler)?;
        if opts.stop_ids.contains(&next) {
            return Ok(Generation { ids, stop: StopReason::Eos });
        }
        ids.push(next);
        if pos >= max_pos {
            return Ok(Generation { ids, stop: StopReason::Context });
        }
        pos += 1;
        input = Tensor::new(&[next], model.device())?.unsqueeze(0)?;
    }
    Ok(Generation { ids, stop: StopReason::Budget })
}

/// Tokenize `prompt`, generate, and decode the new tokens. A character cut in half by the token
/// budget (byte-level tokens split UTF-8 sequences, common in Chinese) is dropped rather than
/// shown as U+FFFD.
pub fn generate_text(model: &dyn CausalLm, tok: &Tokenizer, prompt: &str, opts: &GenerateOptions) -> Result<String> {
    let ids = tokenizer::encode(tok, prompt)?;
    let out = generate(model, &ids, opts)?;
    let text = tokenizer::decode(tok, &out.ids)?;
    Ok(match out.stop {
        StopReason::Eos => text,
        _ => text.trim_end_matches('\u{FFFD}').to_string(),
    })
}

/// The next token from `logits` \[vocab\]. NaN logits are an error naming them (candle's sampler
/// would fail on them with a less telling one, and argmax would quietly pick one).
pub fn pick(logits: &Tensor, sampler: &mut LogitsProcessor) -> Result<u32> {
    let values = logits.to_dtype(DType::F32)?;
    if values.ne(&values)?.max_all()?.to_scalar::<u8>()? != 0 {
        return Err(LoraError::config("logits", "contain NaN; the model's weights or input are broken"));
    }
    Ok(sampler.sample(logits)?)
}

/// Greedy continuations of several prompts at once, decoded together with a KV cache: the
/// prompts are padded on the left to one width and run as one batch, then every step feeds each
/// row's newest token. The cache is left-padded ([`KvCache::left_padded`](crate::models::KvCache::left_padded)): each row's tokens
/// take the positions they would have alone and no query attends to padding, so each row
/// continues as it would alone (tested). This is how a batch that mixes adapters per row is
/// served (t10): the base's matmuls run once for all rows. A row stops at a stop id or after
/// `max_new_tokens`; the stop id is not returned.
pub fn greedy_batch(
    model: &dyn CausalLm,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    stop_ids: &[u32],
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(LoraError::input("prompts", "need at least one, each with at least one token"));
    }
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    if max_new_tokens == 0 {
        return Ok(out);
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(1);
    // The padding's id does not matter (it is never attended to); a stop id is in the vocabulary.
    let pad = stop_ids.first().copied().unwrap_or(0);
    let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let flat: Vec<u32> =
        prompts.iter().flat_map(|p| std::iter::repeat_n(pad, width - p.len()).chain(p.iter().copied())).collect();
    let mut cache = model.new_cache().left_padded(pads)?;
    let ids = Tensor::from_vec(flat, (prompts.len(), width), model.device())?;
    // Only the last column's logits are needed: the head runs on one position per row.
    let hidden = model.forward_hidden(&ids, Some(&mut cache), false)?;
    let mut logits = model.logits(&hidden.narrow(1, width - 1, 1)?)?;
    let mut done = vec![false; prompts.len()];
    for step in 0..max_new_tokens {
        let next: Vec<u32> = logits.squeeze(1)?.to_dtype(DType::F32)?.argmax(1)?.to_vec1()?;
        for (i, &id) in next.iter().enumerate() {
            if done[i] {
                continue;
            }
            if stop_ids.contains(&id) {
                done[i] = true;
            } else {
                out[i].push(id);
            }
        }
        if step + 1 == max_new_tokens || done.iter().all(|&d| d) {
            break;
        }
        // A finished row keeps decoding its last token; its output is no longer read.
        let feed: Vec<u32> = next.iter().zip(&done).map(|(&id, &d)| if d { pad } else { id }).collect();
        let ids = Tensor::from_vec(feed, (prompts.len(), 1), model.device())?;
        logits = model.forward(&ids, Some(&mut cache), false)?;
    }
    Ok(out)
}
