//! The datasets and their plumbing (`src/data.rs`, `src/download.rs`): the embedded set, E2E
//! splits that keep every reference of an MR on one side, deterministic batch orders, templates,
//! and clear errors for bad files.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use lora_from_scratch::experiments::heldout::heldout_prompts;
use lora_from_scratch::fetch::e2e::{extract_e2e_zip, E2E_FILES};
use lora_from_scratch::train::data::{
    e2e_references, e2e_sample, embedded_instructions, encode_samples, epoch_batches, load_e2e, load_instructions,
    read_instructions, split_e2e_by_mr, InstructionRecord, Sample, Template,
};
use proptest::prelude::*;

const DEVSET: &str = "data/e2e/devset.csv";

#[test]
fn the_embedded_set_has_150_pairs_in_english_and_chinese() {
    let records = embedded_instructions();
    assert!(records.len() >= 150, "{} records", records.len());
    let chinese =
        records.iter().filter(|r| r.instruction.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))).count();
    assert!(chinese >= 50 && records.len() - chinese >= 50, "{chinese} Chinese of {}", records.len());
    assert!(records.iter().any(|r| r.instruction == "什么是机器学习？"), "the tutorial's test question is in the set");
    assert!(records.iter().all(|r| !r.instruction.is_empty() && !r.output.is_empty()));
    let distinct: HashSet<&str> = records.iter().map(|r| r.instruction.as_str()).collect();
    assert_eq!(distinct.len(), records.len(), "no question twice");
}

/// A question as compared for leakage: lower case, without spaces or punctuation (ASCII or CJK).
fn normalized(q: &str) -> String {
    q.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// A training question hidden in a held-out prompt, or the other way round (after normalising
/// case, spaces and punctuation): "解释什么是深度学习" asks the training question "什么是深度学习？".
fn leaks(prompt: &str, question: &str) -> bool {
    let (p, q) = (normalized(prompt), normalized(question));
    p.contains(&q) || q.contains(&p)
}

/// The held-out prompts are never trained on: no training question is one of them or inside one
/// (the seed's 解释什么是深度学习 would hide 什么是深度学习), and no reference answer is a training
/// answer.
#[test]
fn the_held_out_prompts_are_not_in_the_training_data() {
    let train = embedded_instructions();
    let answers: HashSet<String> = train.iter().map(|r| normalized(&r.output)).collect();
    let heldout = heldout_prompts();
    assert!(heldout.len() >= 10, "{} held-out prompts", heldout.len());
    for p in &heldout {
        for r in &train {
            assert!(
                !leaks(&p.prompt, &r.instruction),
                "held-out {:?} asks training question {:?}",
                p.prompt,
                r.instruction
            );
        }
        assert!(!answers.contains(&normalized(&p.reference)), "the reference of {:?} is a training answer", p.prompt);
    }
    // The check catches the leaks it is for: a training question re-spaced and re-punctuated,
    // and one inside a longer prompt.
    assert!(leaks("什么是 机器学习?", "什么是机器学习？"));
    assert!(leaks("解释什么是机器学习", "什么是机器学习？"));
    assert!(!leaks("什么是卷积神经网络？", "什么是神经网络？"));
}

#[test]
fn e2e_splits_keep_each_meaning_representation_on_one_side() {
    // The development set ships in the repository (data/e2e/, CC BY-SA 4.0): never skipped.
    assert!(Path::new(DEVSET).is_file(), "{DEVSET} is part of the repository; is the test run from its root?");
    let records = load_e2e(Path::new(DEVSET)).unwrap();
    assert_eq!(records.len(), 4672);
    let (train, val) = split_e2e_by_mr(&records, 0.1, 7);
    assert_eq!(train.len() + val.len(), records.len());
    let train_mrs: HashSet<&str> = train.iter().map(|r| r.mr.as_str()).collect();
    let val_mrs: HashSet<&str> = val.iter().map(|r| r.mr.as_str()).collect();
    assert!(train_mrs.is_disjoint(&val_mrs), "an MR on both sides leaks its references into validation");
    assert_eq!(train_mrs.len() + val_mrs.len(), 547);
    assert_eq!(split_e2e_by_mr(&records, 0.1, 7), (train, val.clone()), "the same seed gives the same split");
    let refs = e2e_references(&val);
    assert_eq!(refs.len(), val_mrs.len());
    assert_eq!(refs.iter().map(|(_, r)| r.len()).sum::<usize>(), val.len());
    let s = e2e_sample(&val[0]);
    assert!(s.prompt.starts_with("Meaning representation: ") && s.prompt.ends_with("\nDescription:"));
    assert_eq!(s.response, format!(" {}", val[0].reference));
}

proptest! {
    // A fixed seed: the same cases on every run.
    #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(0x10ad_f00d), ..Default::default() })]

    #[test]
    fn each_epoch_visits_every_example_once(n in 1usize..60, bs in 1usize..9, seed in 0u64..100, epoch in 0usize..5) {
        let batches = epoch_batches(n, bs, seed, epoch);
        let mut seen: Vec<usize> = batches.concat();
        prop_assert!(batches.iter().all(|b| b.len() <= bs && !b.is_empty()));
        prop_assert_eq!(&batches, &epoch_batches(n, bs, seed, epoch), "the order depends only on its arguments");
        seen.sort();
        prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }
}

#[test]
fn templates_put_the_instruction_in_the_prompt() {
    let r =
        InstructionRecord { instruction: "What is LoRA?".into(), input: "briefly".into(), output: "Low-rank.".into() };
    let chat = Template::ChatMl.sample(&r);
    assert!(chat.prompt.ends_with("<|im_start|>user\nWhat is LoRA?\n\nbriefly<|im_end|>\n<|im_start|>assistant\n"));
    assert_eq!(chat.response, "Low-rank.");
    let plain = Template::Plain.sample(&r);
    assert_eq!(plain.prompt, "### Instruction:\nWhat is LoRA?\n\nbriefly\n\n### Response:\n");
    assert_eq!(Template::for_architecture("gpt2"), Template::Plain);
    assert_eq!(Template::for_architecture("llama"), Template::ChatMl);
    // Qwen2.5-Instruct's template: ChatML with its own default system message.
    assert_eq!(Template::for_architecture("qwen2"), Template::QwenChatMl);
    assert_eq!(
        Template::QwenChatMl.prompt("你好", ""),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(Template::for_architecture("mistral"), Template::MistralInst);
    assert_eq!(Template::MistralInst.prompt("What is LoRA?", ""), "<s>[INST] What is LoRA? [/INST]");
}

#[test]
fn bad_dataset_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"instruction\": \"q\", \"output\": \"a\"}\n{\"question\": \"no\"}\n").unwrap();
    let err = load_instructions(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.jsonl") && err.contains("line 2"), "{err}");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    assert!(load_instructions(&empty).unwrap_err().to_string().contains("no records"));
    // A bad byte is named by its line, not only the file.
    let latin1 = dir.path().join("latin1.jsonl");
    std::fs::write(
        &latin1,
        b"{\"instruction\": \"q\", \"output\": \"a\"}\n{\"instruction\": \"caf\xe9\", \"output\": \"a\"}\n",
    )
    .unwrap();
    let err = load_instructions(&latin1).unwrap_err().to_string();
    assert!(err.contains("latin1.jsonl") && err.contains("line 2: not UTF-8") && err.contains("0xe9"), "{err}");
    // Blank lines are skipped and counted; the final newline is not a blank line.
    let gaps = dir.path().join("gaps.jsonl");
    let record = "{\"instruction\": \"q\", \"output\": \"a\"}";
    std::fs::write(&gaps, format!("{record}\n\n{record}\r\n  \n{record}\n")).unwrap();
    let file = read_instructions(&gaps).unwrap();
    assert_eq!((file.records.len(), file.blank_lines), (3, 2));
    let csv = dir.path().join("e2e.csv");
    std::fs::write(&csv, "mr,ref\n").unwrap();
    assert!(load_e2e(&csv).unwrap_err().to_string().contains("no E2E rows"));
}

/// The release's CSVs come out of its zip wherever they sit inside it.
#[test]
fn the_e2e_release_zip_unpacks_its_csvs() {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        for f in E2E_FILES {
            zip.start_file(format!("e2e-dataset/{f}"), opts).unwrap();
            zip.write_all(format!("mr,ref\n\"name[{f}]\",\"text\"\n").as_bytes()).unwrap();
        }
        zip.start_file("e2e-dataset/README.md", opts).unwrap();
        zip.finish().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let written = extract_e2e_zip(buf.get_ref(), dir.path()).unwrap();
    assert_eq!(written.len(), 3);
    assert_eq!(load_e2e(&dir.path().join("devset.csv")).unwrap()[0].mr, "name[devset.csv]");
    assert!(extract_e2e_zip(b"not a zip", dir.path()).is_err());
    // Two devset.csv and no testset_w_refs.csv is not the release, though it holds three CSVs.
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        for f in ["a/trainset.csv", "a/devset.csv", "b/devset.csv"] {
            zip.start_file(f, opts).unwrap();
            zip.write_all(b"mr,ref\n").unwrap();
        }
        zip.finish().unwrap();
    }
    let other = tempfile::tempdir().unwrap();
    let err = extract_e2e_zip(buf.get_ref(), other.path()).unwrap_err().to_string();
    assert!(err.contains("devset.csv twice"), "{err}");
}

/// A word-level tokenizer over a few words (the tokenizers crate's own WordLevel model), enough
/// to count tokens without a model's files.
fn word_tokenizer() -> tokenizers::Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    let vocab = ["[UNK]", "q", "a", "b", "</s>"].iter().enumerate().map(|(i, w)| (w.to_string(), i as u32)).collect();
    let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Whitespace {}));
    tok
}

/// A max_len that cuts every example before its answer leaves nothing to train on: the error
/// says so when the data is prepared, names `--max-len` and suggests a length that fits.
#[test]
#[cfg_attr(feature = "exercises", ignore = "runs t05's tokenize_example")]
fn a_max_len_that_cuts_every_answer_is_refused_with_a_length_that_fits() {
    let tok = word_tokenizer();
    let sample = |prompt: &str| Sample { prompt: prompt.into(), response: "a b".into() };
    let samples = vec![sample("q q q q q"), sample("q q q")];
    // The longest: 5 prompt + 2 answer + end = 8 tokens. At 3 both answers are cut away.
    let msg = encode_samples(&tok, &samples, 4, 3).unwrap_err().to_string();
    assert!(msg.contains("--max-len") && msg.contains("all 2 examples") && msg.contains("8 tokens"), "{msg}");
    assert!(msg.contains("try --max-len 64"), "{msg}");
    // At 4 the short one keeps the first token of its answer: counted, not refused.
    let (examples, cut) = encode_samples(&tok, &samples, 4, 4).unwrap();
    assert_eq!(examples.len(), 2);
    assert_eq!((cut.examples_cut, cut.examples_without_answer, cut.longest), (2, 1, 8));
}

/// `positions_in_steps` walks the training loop's batches: one epoch of batch size 1 runs over
/// every example once (its length, no padding); larger batches add the padding up to each
/// batch's longest example, never less than the tokens themselves; gradient accumulation of 2
/// over 3 steps covers the same micro-batches as 6 steps without it.
#[test]
fn positions_in_steps_counts_every_padded_position() {
    use lora_from_scratch::tasks::t05_data::Example;
    use lora_from_scratch::train::data::positions_in_steps;
    let examples: Vec<Example> = (1..=9)
        .map(|n| Example { input_ids: vec![1; n * 3 % 11 + 1], labels: vec![-100; n * 3 % 11 + 1], truncated: 0 })
        .collect();
    let real: usize = examples.iter().map(|e| e.input_ids.len()).sum();
    assert_eq!(positions_in_steps(&examples, 1, 1, 5, 0..9), real);
    let padded = positions_in_steps(&examples, 4, 1, 5, 0..3);
    let by_hand: usize = epoch_batches(9, 4, 5, 0)
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| examples[i].input_ids.len()).max().unwrap())
        .sum();
    assert_eq!(padded, by_hand);
    assert!(padded > real, "batches of 4 pad the shorter examples");
    assert_eq!(positions_in_steps(&examples, 4, 2, 5, 0..3), positions_in_steps(&examples, 4, 1, 5, 0..6));
    // Past the first epoch the order is the next epoch's.
    assert_eq!(positions_in_steps(&examples, 1, 1, 5, 9..18), real);
}
