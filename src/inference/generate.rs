//! Text generation with a KV cache: greedy decoding or sampling with temperature, top-k and
//! top-p (Holtzman et al. 2019), seeded so a run can be repeated.
//!
//! The prompt is fed once; after that each step feeds only the newest token, and the model's
//! [`KvCache`](crate::models::KvCache) supplies the keys and values of everything before it.

use candle_core::{DType, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
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
        return Err(LoraError::config("prompt", "is empty; generation needs at least one token"));
    }
    let mut rng = StdRng::seed_from_u64(opts.sampling.seed);
    let mut cache = model.new_cache();
    let mut ids = Vec::new();
    let mut input = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let max_pos = model.max_positions().unwrap_or(usize::MAX);
    let mut pos = prompt.len();
    while ids.len() < opts.max_new_tokens {
        let logits = model.forward(&input, Some(&mut cache), false)?;
        let last = logits.squeeze(0)?.get(input.dim(1)? - 1)?;
        let next = pick(&last, &opts.sampling, &mut rng)?;
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

/// The next token from `logits` [vocab].
pub fn pick(logits: &Tensor, s: &Sampling, rng: &mut StdRng) -> Result<u32> {
    if s.temperature <= 0.0 {
        return Ok(logits.argmax(D::Minus1)?.to_scalar::<u32>()?);
    }
    let logits: Vec<f32> = (logits.to_dtype(DType::F32)? / s.temperature)?.to_vec1()?;
    if logits.iter().any(|x| x.is_nan()) {
        return Err(LoraError::config("logits", "contain NaN; the model's weights or input are broken"));
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if let Some(k) = s.top_k {
        order.truncate(k.max(1));
    }
    // Softmax over the kept tokens, most likely first.
    let max = logits[order[0]];
    let mut probs: Vec<f64> = order.iter().map(|&i| f64::from(logits[i] - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = s.top_p {
        let mut acc = 0.0;
        let keep = probs.iter().position(|q| {
            acc += q;
            acc >= p
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * total;
    for (i, p) in order.iter().zip(&probs) {
        r -= p;
        if r <= 0.0 {
            return Ok(*i as u32);
        }
    }
    Ok(*order.last().expect("at least one token is kept") as u32)
}

/// Greedy continuations of several prompts at once, decoded together with a KV cache: the
/// prompts are padded on the left to one width and run as one batch, then every step feeds each
/// row's newest token. The cache is left-padded ([`KvCache::left_padded`]): each row's tokens
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
        return Err(LoraError::config("prompts", "need at least one, each with at least one token"));
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
