//! Grader for task 2.1, training examples and batches (book/src/t05_data.md).
//!
//! Run: `cargo test --features exercises --test t05_data`.

mod common;

use common::*;
use lora_from_scratch::tasks::t05_data::{collate, tokenize_example, Example, IGNORE_INDEX};
use proptest::prelude::*;

fn ids(n: usize, start: u32) -> Vec<u32> {
    (0..n as u32).map(|i| start + i).collect()
}

proptest! {
    #![proptest_config(proptest_config(64))]

    #[test]
    fn only_the_response_and_eos_are_trained_on(p in 0usize..20, r in 0usize..20) {
        book("t05_data", "Which tokens the loss sees");
        let (prompt, response) = (ids(p, 100), ids(r, 500));
        let e = tokenize_example(&prompt, &response, 7, 1000).unwrap();
        let mut want_ids = prompt.clone();
        want_ids.extend(&response);
        want_ids.push(7);
        prop_assert_eq!(&e.input_ids, &want_ids, "input ids are prompt + response + EOS");
        prop_assert_eq!(e.labels.len(), e.input_ids.len(), "one label per input id");
        prop_assert!(e.labels[..p].iter().all(|&l| l == IGNORE_INDEX && l == -100),
            "every prompt position is ignored with -100, PyTorch's ignore_index, so that labels mean what they mean in transformers");
        let trained: Vec<i64> = want_ids[p..].iter().map(|&t| i64::from(t)).collect();
        prop_assert_eq!(&e.labels[p..], &trained[..], "response and EOS positions are labelled with their own token");
        prop_assert_eq!(e.truncated, 0);
    }

    #[test]
    fn truncation_keeps_a_prefix_and_counts_the_cut(p in 0usize..20, r in 0usize..20, max_len in 1usize..30) {
        book("t05_data", "Truncation");
        let full = tokenize_example(&ids(p, 100), &ids(r, 500), 7, 1000).unwrap();
        let cut = tokenize_example(&ids(p, 100), &ids(r, 500), 7, max_len).unwrap();
        let n = (p + r + 1).min(max_len);
        prop_assert_eq!(&cut.input_ids[..], &full.input_ids[..n], "truncation keeps the start");
        prop_assert_eq!(&cut.labels[..], &full.labels[..n]);
        prop_assert_eq!(cut.truncated, p + r + 1 - n, "the number of tokens cut is reported");
    }

    #[test]
    fn batches_are_padded_right_and_padding_is_never_trained(lens in prop::collection::vec((0usize..8, 0usize..8), 1..6),
                                                              pad in 0u32..3) {
        book("t05_data", "Padding and the mask");
        let examples: Vec<Example> =
            lens.iter().map(|&(p, r)| tokenize_example(&ids(p, 100), &ids(r, 500), 7, 1000).unwrap()).collect();
        let b = collate(&examples, pad, &CPU).unwrap();
        let longest = examples.iter().map(|e| e.input_ids.len()).max().unwrap();
        prop_assert_eq!(b.input_ids.dims(), &[examples.len(), longest]);
        prop_assert_eq!(b.labels.dims(), &[examples.len(), longest]);
        prop_assert_eq!(b.attention_mask.dims(), &[examples.len(), longest]);
        let got_ids: Vec<Vec<u32>> = b.input_ids.to_vec2().unwrap();
        let got_labels: Vec<Vec<i64>> = b.labels.to_vec2().unwrap();
        let mask: Vec<Vec<u32>> = b.attention_mask.to_vec2().unwrap();
        for (i, e) in examples.iter().enumerate() {
            let n = e.input_ids.len();
            prop_assert_eq!(&got_ids[i][..n], &e.input_ids[..], "real tokens come first (right padding)");
            prop_assert_eq!(&got_labels[i][..n], &e.labels[..]);
            prop_assert!(got_ids[i][n..].iter().all(|&t| t == pad), "padding uses the pad id");
            prop_assert!(got_labels[i][n..].iter().all(|&l| l == IGNORE_INDEX && l == -100),
                "padding is never trained on: its label is -100, PyTorch's ignore_index");
            prop_assert!(mask[i][..n].iter().all(|&m| m == 1) && mask[i][n..].iter().all(|&m| m == 0),
                "the mask is 1 on real tokens and 0 on padding");
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    book("t05_data", "Padding and the mask");
    assert!(tokenize_example(&[1], &[2], 7, 0).is_err(), "max_len 0 fits nothing: an error");
    assert!(collate(&[], 0, &CPU).is_err(), "an empty batch is an error");
}
