//! Grader for task 1.3, `inject_lora` and its helpers (book/src/t03_inject.md).
//!
//! Run: `cargo test --features exercises --test t03_inject`.

mod common;

use std::collections::BTreeSet;

use candle_core::Var;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::*;
use lora_from_scratch::tasks::t03_inject::{
    check_gradients, check_lora_injection, print_trainable_parameters, target_matches, unfreeze_lora_parameters,
};
use lora_from_scratch::tasks::t03_inject::{
    count_parameters, find_target_modules, freeze_base_model, get_lora_parameters, inject_lora,
};
use lora_from_scratch::{LinearSlot, LoraConfig, LoraError, LoraModel, ALL_LINEAR};
use proptest::prelude::*;

const KINDS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn adapted_names(model: &dyn LoraModel) -> Vec<String> {
    model.linears().into_iter().filter(|(_, s)| s.lora().is_some()).map(|(n, _)| n).collect()
}

proptest! {
    #![proptest_config(proptest_config(24))]

    #[test]
    fn targets_match_full_names_and_dotted_suffixes(parts in prop::collection::vec("[a-z_]{1,6}", 1..5), cut in 0usize..5) {
        book("t03_inject", "Matching names as PEFT does");
        let name = parts.join(".");
        prop_assert!(target_matches(&name, &name), "a full module name must select its module");
        let suffix = parts[cut.min(parts.len() - 1)..].join(".");
        prop_assert!(target_matches(&name, &suffix), "the dotted suffix {suffix:?} must select {name:?}");
        let last = parts.last().unwrap();
        if last.len() > 1 && parts.len() > 1 {
            // A suffix that starts inside a name part must not match: "proj" is not "q_proj".
            let inner = &last[1..];
            let whole_part = parts.iter().any(|p| p == inner);
            prop_assert!(whole_part || !target_matches(&name, inner),
                "{inner:?} starts inside a name part of {name:?} and must not select it");
        }
        prop_assert!(!target_matches(&name, &format!("{name}x")), "a longer name must not match");
    }

    #[test]
    fn inject_adapts_exactly_the_targets(mask in 1u8..128, r in 1usize..6, seed in any::<u64>()) {
        book("t03_inject", "Injection without setattr");
        let targets: Vec<&str> = KINDS.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, k)| *k).collect();
        let mut model = tiny(seed);
        let summary = inject_lora(&mut model, &LoraConfig::new(r, 8.0, &targets)).unwrap();
        let want: Vec<String> = model.linears().into_iter().map(|(n, _)| n)
            .filter(|n| targets.iter().any(|t| n.ends_with(&format!(".{t}")))).collect();
        prop_assert_eq!(adapted_names(&model), want.clone(), "exactly the layers named by target_modules must get adapters");
        let summary_names: Vec<String> = summary.adapted.iter().map(|m| m.name.clone()).collect();
        prop_assert_eq!(summary_names, want, "the summary must list the adapted layers in model order");

        // Trainable parameters: r * (in + out) per adapted layer, and nothing else.
        let expected: usize = model.linears().into_iter().filter_map(|(_, s)| s.lora().map(|_| s.in_out_features()))
            .map(|(i, o)| r * (i + o)).sum();
        prop_assert_eq!(summary.params.trainable, expected, "trainable count must be r * (in + out) per adapted layer");
        prop_assert_eq!(count_parameters(&model), summary.params, "the summary's counts must be count_parameters'");
        let base_total: usize = tiny(seed).linears().into_iter().map(|(_, s)| {
            s.base_weight().unwrap().elem_count() + s.base_bias().map_or(0, |b| b.elem_count())
        }).sum::<usize>() + tiny(seed).params().into_iter().map(|(_, p)| p.elem_count()).sum::<usize>();
        prop_assert_eq!(summary.params.total, base_total + expected, "all params = base params + adapter params");

        let lora_params = get_lora_parameters(&model);
        prop_assert_eq!(lora_params.len(), 2 * summary.adapted.len(), "get_lora_parameters must return A and B of each adapter");
        for (name, var) in &lora_params {
            prop_assert!(name.ends_with(".lora_A.weight") || name.ends_with(".lora_B.weight"),
                "adapter parameters are named <module>.lora_A.weight / .lora_B.weight, found {name}");
            let module = name.trim_end_matches(".lora_A.weight").trim_end_matches(".lora_B.weight");
            prop_assert!(summary.adapted.iter().any(|m| m.name == module), "{name} must belong to an adapted module");
            prop_assert!(var.as_tensor().is_variable(), "{name} must be a Var");
        }
    }

    #[test]
    fn injection_leaves_the_output_unchanged(r in 1usize..6, seed in any::<u64>()) {
        book("t03_inject", "Equal to the base at the start");
        let mut model = tiny(seed);
        let ids = token_ids(&mut rng(seed), 2, 5, model.config().vocab_size);
        let before = model.forward(&ids, false).unwrap();
        inject_lora(&mut model, &LoraConfig::new(r, 16.0, &[ALL_LINEAR])).unwrap();
        prop_assert_eq!(bits(&model.forward(&ids, false).unwrap()), bits(&before),
            "with every B = 0 the injected model must give the base model's logits bit for bit");
    }

    #[test]
    fn an_optimizer_step_changes_only_adapters(r in 1usize..5, seed in any::<u64>()) {
        book("t03_inject", "Only the adapters learn");
        let mut model = tiny(seed);
        // Loaded for full fine-tuning: every weight a Var. Injection must freeze them.
        unfreeze_everything(&mut model);
        inject_lora(&mut model, &LoraConfig::new(r, 8.0, &["q_proj", "v_proj", "up_proj"])).unwrap();
        let base_before = base_weight_bits(&model);
        let vars = all_trainable_vars(&model);
        let names: BTreeSet<String> = vars.iter().map(|(n, _)| n.clone()).collect();
        let lora_names: BTreeSet<String> = get_lora_parameters(&model).into_iter().map(|(n, _)| n).collect();
        prop_assert_eq!(&names, &lora_names, "after injection the only trainable weights must be the adapters' A and B");

        let b_before: Vec<Vec<u32>> = vars.iter().filter(|(n, _)| n.ends_with("lora_B.weight")).map(|(_, v)| bits(v.as_tensor())).collect();
        let mut opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), ParamsAdamW { lr: 1e-2, ..Default::default() }).unwrap();
        let ids = token_ids(&mut rng(seed), 2, 5, model.config().vocab_size);
        opt.backward_step(&model.loss(&ids, true).unwrap()).unwrap();
        prop_assert_eq!(base_weight_bits(&model), base_before, "an optimizer step must leave every base weight bitwise unchanged");
        let b_after: Vec<Vec<u32>> = vars.iter().filter(|(n, _)| n.ends_with("lora_B.weight")).map(|(_, v)| bits(v.as_tensor())).collect();
        prop_assert!(b_before.iter().zip(&b_after).all(|(x, y)| x != y), "every adapter's B must move in the first step");
    }
}

#[test]
fn all_linear_takes_every_linear_but_the_head() {
    book("t03_inject", "Matching names as PEFT does");
    let mut model = tiny(1);
    let names = find_target_modules(&model, &[ALL_LINEAR.to_string()]).unwrap();
    let every: Vec<String> = model.linears().into_iter().map(|(n, _)| n).filter(|n| n != "lm_head").collect();
    assert_eq!(names, every, "\"all-linear\" must select every linear layer except the output head, as PEFT does");
    inject_lora(&mut model, &LoraConfig::new(2, 4.0, &[ALL_LINEAR])).unwrap();
    assert_eq!(adapted_names(&model), every);
    assert!(
        model.linears().into_iter().any(|(n, s)| n == "lm_head" && s.lora().is_none()),
        "the head keeps no adapter"
    );
}

#[test]
fn an_unknown_target_is_an_error_listing_the_names() {
    book("t03_inject", "A typo is an error");
    let mut model = tiny(2);
    let err = inject_lora(&mut model, &LoraConfig::new(4, 8.0, &["q_proj", "qproj"])).unwrap_err();
    match &err {
        LoraError::UnknownTarget { target, available } => {
            assert_eq!(target, "qproj", "the error must name the target that matched nothing");
            assert!(available.contains(&"model.layers.0.self_attn.q_proj".to_string()), "and list the real names");
        }
        other => panic!("an unknown target must be LoraError::UnknownTarget, got {other}"),
    }
    assert!(
        err.to_string().contains("q_proj, k_proj") && err.to_string().contains("down_proj"),
        "the message must list the names a target can use: {err}"
    );
    assert!(adapted_names(&model).is_empty(), "a failed injection must change nothing, not adapt q_proj halfway");
}

#[test]
fn injecting_twice_is_an_error_and_changes_nothing() {
    book("t03_inject", "Injection without setattr");
    let mut model = tiny(3);
    inject_lora(&mut model, &LoraConfig::new(4, 8.0, &["q_proj"])).unwrap();
    let a_before: Vec<Vec<u32>> = get_lora_parameters(&model).iter().map(|(_, v)| bits(v.as_tensor())).collect();
    let err = inject_lora(&mut model, &LoraConfig::new(2, 8.0, &["q_proj", "v_proj"]));
    assert!(err.is_err(), "a layer cannot take a second adapter silently");
    assert_eq!(adapted_names(&model).len(), 2, "a refused injection must not adapt v_proj either");
    let a_after: Vec<Vec<u32>> = get_lora_parameters(&model).iter().map(|(_, v)| bits(v.as_tensor())).collect();
    assert_eq!(a_before, a_after, "the existing adapters must be untouched");
}

#[test]
fn the_same_seed_gives_the_same_adapters() {
    book("t03_inject", "Injection without setattr");
    let (mut m1, mut m2) = (tiny(4), tiny(4));
    let mut cfg = LoraConfig::new(3, 6.0, &[ALL_LINEAR]);
    inject_lora(&mut m1, &cfg).unwrap();
    inject_lora(&mut m2, &cfg).unwrap();
    let a = |m: &dyn LoraModel| get_lora_parameters(m).iter().map(|(_, v)| bits(v.as_tensor())).collect::<Vec<_>>();
    assert_eq!(a(&m1), a(&m2), "inject_lora must draw A from config.seed only, so runs repeat");
    let mut m3 = tiny(4);
    cfg.seed = 99;
    inject_lora(&mut m3, &cfg).unwrap();
    assert_ne!(a(&m1), a(&m3), "another seed must draw other A");
}

#[test]
fn freeze_and_unfreeze() {
    book("t03_inject", "What freezing means in candle");
    let mut model = tiny(5);
    inject_lora(&mut model, &LoraConfig::new(2, 4.0, &["k_proj"])).unwrap();
    unfreeze_everything(&mut model);
    assert!(all_trainable_vars(&model).len() > 4, "setup: base weights made trainable");
    freeze_base_model(&mut model);
    let names: Vec<String> = all_trainable_vars(&model).into_iter().map(|(n, _)| n).collect();
    assert!(
        names.iter().all(|n| n.contains(".lora_")),
        "freeze_base_model must leave only adapters trainable: {names:?}"
    );
    assert_eq!(names.len(), 4, "and must not freeze the adapters");

    for (_, slot) in model.linears_mut() {
        if let LinearSlot::Lora(l) = slot {
            for p in l.lora_mut().params_mut() {
                p.freeze();
            }
        }
    }
    assert!(get_lora_parameters(&model).is_empty(), "frozen adapters are not trainable parameters");
    unfreeze_lora_parameters(&mut model).unwrap();
    assert_eq!(get_lora_parameters(&model).len(), 4, "unfreeze_lora_parameters must make A and B trainable again");
}

#[test]
fn the_reports_read_as_expected() {
    book("t03_inject", "Checking an injection");
    let mut model = tiny(6);
    inject_lora(&mut model, &LoraConfig::new(4, 8.0, &["q_proj", "v_proj"])).unwrap();
    let count = print_trainable_parameters(&model);
    assert_eq!(count, count_parameters(&model));
    insta::assert_snapshot!("trainable_parameters", count.to_string());

    let report = check_lora_injection(&model);
    assert!(report.is_ok(), "a fresh injection must pass its own check:\n{report}");
    assert_eq!(report.adapted.len(), 4);
    assert_eq!(report.frozen.len(), model.linears().len() - 4);
    insta::assert_snapshot!("injection_report", report.to_string());

    // A base layer left trainable is the classic mistake the check exists for.
    for (name, slot) in model.linears_mut() {
        if let (true, LinearSlot::Linear(l)) = (name == "model.layers.0.mlp.up_proj", slot) {
            l.weight.unfreeze().unwrap();
        }
    }
    let report = check_lora_injection(&model);
    assert!(!report.is_ok(), "a trainable base layer must fail the check");
    assert_eq!(report.trainable_base, vec!["model.layers.0.mlp.up_proj".to_string()]);
    insta::assert_snapshot!("injection_report_with_trainable_base", report.to_string());
}

#[test]
fn an_adapter_with_a_frozen_half_is_reported() {
    book("t03_inject", "Checking an injection");
    let target = "model.layers.1.self_attn.v_proj";
    // A frozen and B trainable, then the other way round: either half frozen stops it learning.
    for (frozen, which) in [(0, "A"), (1, "B")] {
        let mut model = tiny(8);
        inject_lora(&mut model, &LoraConfig::new(2, 4.0, &["q_proj", "v_proj"])).unwrap();
        for (name, slot) in model.linears_mut() {
            if name == target {
                slot.lora_mut().expect("v_proj is adapted").lora_mut().params_mut()[frozen].freeze();
            }
        }
        let report = check_lora_injection(&model);
        assert_eq!(
            report.frozen_adapters,
            vec![target.to_string()],
            "an adapter whose {which} alone is frozen must be listed in frozen_adapters (and only it):\n{report}"
        );
        assert!(!report.is_ok(), "an adapter that cannot learn must fail the check:\n{report}");
        assert_eq!(report.adapted.len(), 4, "it is still an adapted module:\n{report}");
    }
}

#[test]
fn check_gradients_sees_where_gradients_go() {
    book("t03_inject", "Checking gradients");
    let mut model = tiny(7);
    inject_lora(&mut model, &LoraConfig::new(4, 8.0, &["q_proj", "down_proj"])).unwrap();
    let ids = token_ids(&mut rng(7), 2, 5, model.config().vocab_size);
    let grads = model.loss(&ids, true).unwrap().backward().unwrap();
    let report = check_gradients(&model, &grads).unwrap();
    assert_eq!(report.entries.len(), 8, "one entry per trainable parameter: A and B of 4 adapters");
    assert!(report.is_ok(), "every adapter is on the path to the loss:\n{report}");
    for e in &report.entries {
        let norm = e.norm.unwrap();
        if e.name.ends_with("lora_A.weight") {
            assert_eq!(norm, 0.0, "{}: at init A's gradient is zero because B is zero", e.name);
        } else {
            assert!(norm > 0.0, "{}: B's gradient must be non-zero at init", e.name);
        }
    }
    // A loss that does not involve the model: every parameter is cut off and must be flagged.
    let other = Var::new(&[1.0f32, 2.0], &CPU).unwrap();
    let grads = other.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let report = check_gradients(&model, &grads).unwrap();
    assert_eq!(report.missing().len(), 8, "parameters without a gradient must be flagged:\n{report}");
    assert!(!report.is_ok());
}
