//! Sampling goes through candle-transformers' `LogitsProcessor`: each setting of
//! `generate::Sampling` must draw tokens with the frequencies of the distribution it names
//! (softmax at the temperature, cut to the top k and/or the top-p nucleus, renormalised), and
//! never a token the cut removed. The expected distributions are computed here in f64 from the
//! definitions, independently of candle's code.

use approx::abs_diff_eq;
use candle_core::{Device, Tensor};
use lora_from_scratch::inference::generate::{pick, Sampling};

const LOGITS: [f32; 7] = [2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0];
const DRAWS: usize = 40_000;

/// softmax(logits / t), f64.
fn softmax(t: f64) -> Vec<f64> {
    let e: Vec<f64> = LOGITS.iter().map(|&l| (f64::from(l) / t).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

/// The distribution a setting samples from. The logits are sorted already, so "the k most
/// likely" are the first k. With both cuts, p is measured against the uncut probabilities
/// (candle's reading; see `src/inference/generate.rs`).
fn expected(s: &Sampling) -> Vec<f64> {
    let probs = softmax(s.temperature);
    let k = s.top_k.unwrap_or(probs.len()).clamp(1, probs.len());
    let mut keep = k;
    if let Some(p) = s.top_p.filter(|p| *p > 0.0 && *p < 1.0) {
        let mut acc = 0.0;
        // The smallest prefix whose mass reaches p, within the top k.
        let nucleus = probs.iter().position(|q| {
            acc += q;
            acc >= p
        });
        keep = keep.min(nucleus.map_or(probs.len(), |i| i + 1));
    }
    let mass: f64 = probs[..keep].iter().sum();
    (0..probs.len()).map(|i| if i < keep { probs[i] / mass } else { 0.0 }).collect()
}

fn frequencies(s: &Sampling) -> Vec<f64> {
    let logits = Tensor::new(&LOGITS, &Device::Cpu).unwrap();
    let mut sampler = s.processor();
    let mut counts = vec![0usize; LOGITS.len()];
    for _ in 0..DRAWS {
        counts[pick(&logits, &mut sampler).unwrap() as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / DRAWS as f64).collect()
}

#[test]
fn sampled_frequencies_follow_the_filtered_distribution() {
    let at = |temperature, top_k, top_p| Sampling { temperature, top_k, top_p, seed: 17 };
    for s in [
        at(1.0, None, None),
        at(0.6, None, None),
        at(1.4, None, None),
        at(0.8, Some(3), None),
        at(1.0, None, Some(0.8)),
        at(1.0, Some(4), Some(0.7)),
        at(1.0, Some(2), Some(0.95)),
    ] {
        let (want, got) = (expected(&s), frequencies(&s));
        for (i, (&e, &f)) in want.iter().zip(&got).enumerate() {
            if e == 0.0 {
                assert_eq!(f, 0.0, "{s:?}: token {i} was cut, yet drawn");
            } else {
                // Five standard deviations of a frequency over DRAWS draws.
                let sd = (e * (1.0 - e) / DRAWS as f64).sqrt();
                assert!(
                    abs_diff_eq!(f, e, epsilon = 5.0 * sd),
                    "{s:?}: token {i} drawn with frequency {f}, the distribution gives {e} (tolerance {})",
                    5.0 * sd
                );
            }
        }
    }
}

/// Greedy is the argmax whatever the seed, and a seed repeats its draws.
#[test]
fn greedy_is_argmax_and_seeds_repeat() {
    let logits = Tensor::new(&[0.1f32, 3.0, -2.0, 2.9], &Device::Cpu).unwrap();
    for seed in 0..5 {
        let mut greedy = Sampling { seed, ..Sampling::greedy() }.processor();
        assert_eq!(pick(&logits, &mut greedy).unwrap(), 1);
    }
    let draws = |seed| {
        let mut p = Sampling { temperature: 1.0, top_k: None, top_p: None, seed }.processor();
        (0..32).map(|_| pick(&logits, &mut p).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(draws(3), draws(3));
    assert_ne!(draws(3), draws(4), "different seeds give different draws");
}

#[test]
fn nan_logits_are_an_error_that_names_them() {
    let logits = Tensor::new(&[0.1f32, f32::NAN, 1.0], &Device::Cpu).unwrap();
    for s in [Sampling::greedy(), Sampling { temperature: 1.0, top_k: Some(2), top_p: None, seed: 0 }] {
        let err = pick(&logits, &mut s.processor()).unwrap_err().to_string();
        assert!(err.contains("NaN"), "{err}");
    }
}
