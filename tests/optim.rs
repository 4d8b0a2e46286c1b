//! Our AdamW (in place on the CPU, `src/fused/adamw.rs`) against candle_nn's `AdamW`, which
//! implements the same update (PyTorch's `torch.optim.AdamW`): the parameters must follow the
//! same trajectory over several steps with changing gradients, in f32 and f64.

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::{Optimizer, ParamsAdamW};
use common::{max_abs_diff, proptest_config, randn, rng, values};
use lora_from_scratch::train::optim::{AdamW, AdamWParams};
use proptest::prelude::*;

/// A gradient store holding `g` for `var`: the gradient of `sum(var * g)`.
fn grads_for(var: &Var, g: &Tensor) -> GradStore {
    (var.as_tensor() * g).unwrap().sum_all().unwrap().backward().unwrap()
}

fn trajectories_match(dtype: DType, seed: u64, n: usize, lr: f64, weight_decay: f64) -> Result<(), String> {
    let init = randn(&mut rng(seed), &[n, 3], dtype);
    let ours = Var::from_tensor(&init.copy().unwrap()).unwrap();
    let theirs = Var::from_tensor(&init.copy().unwrap()).unwrap();
    let mut opt = AdamW::new(vec![("w".into(), ours.clone())], AdamWParams { lr, weight_decay, ..Default::default() })
        .map_err(|e| e.to_string())?;
    let p = ParamsAdamW { lr, weight_decay, ..Default::default() };
    let mut reference = candle_nn::AdamW::new(vec![theirs.clone()], p).map_err(|e| e.to_string())?;
    for step in 0..4 {
        let g = randn(&mut rng(seed + 100 + step), &[n, 3], dtype);
        opt.step(&grads_for(&ours, &g)).map_err(|e| e.to_string())?;
        reference.step(&grads_for(&theirs, &g)).map_err(|e| e.to_string())?;
        let d = max_abs_diff(&values(ours.as_tensor()), &values(theirs.as_tensor()));
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
        if d > tol {
            return Err(format!("step {step}: parameters differ by {d}"));
        }
    }
    // The update moved the parameters (a no-op optimizer would pass the comparison above only if
    // candle_nn's did nothing too).
    if max_abs_diff(&values(ours.as_tensor()), &values(&init)) < 1e-4 {
        return Err("the parameters did not move".into());
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config(10))]

    #[test]
    fn adamw_matches_candle_nn(seed in 0u64..1000, n in 1usize..50, lr in 1e-4f64..1e-1, wd in 0f64..0.1) {
        trajectories_match(DType::F32, seed, n, lr, wd).map_err(TestCaseError::fail)?;
        trajectories_match(DType::F64, seed, n, lr, wd).map_err(TestCaseError::fail)?;
    }
}

/// A variable without a gradient is left alone, moments included.
#[test]
fn a_var_without_gradient_is_untouched() {
    let a = Var::from_tensor(&randn(&mut rng(1), &[4], DType::F32)).unwrap();
    let b = Var::from_tensor(&randn(&mut rng(2), &[4], DType::F32)).unwrap();
    let before = values(b.as_tensor());
    let mut opt = AdamW::new(vec![("a".into(), a.clone()), ("b".into(), b.clone())], AdamWParams::default()).unwrap();
    opt.step(&grads_for(&a, &Tensor::ones(4, DType::F32, &candle_core::Device::Cpu).unwrap())).unwrap();
    assert_eq!(values(b.as_tensor()), before);
}

/// A parameter group at scale k moves exactly as the same parameter would under an optimizer
/// whose learning rate is k times larger (PyTorch's per-group `lr`), and a bad scale is refused.
#[test]
fn parameter_groups_scale_the_learning_rate() {
    use lora_from_scratch::train::optim::ParamGroup;
    let mut r = common::rng(3);
    let x0 = common::randn(&mut r, &[12], DType::F64);
    let (a, b) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&x0).unwrap());
    let c = Var::from_tensor(&x0).unwrap();
    let params = AdamWParams { lr: 1e-2, weight_decay: 0.05, ..Default::default() };
    let groups = vec![
        ParamGroup { name: "a".into(), vars: vec![("a".into(), a.clone())], lr_scale: 1.0 },
        ParamGroup { name: "b".into(), vars: vec![("b".into(), b.clone())], lr_scale: 16.0 },
    ];
    let mut grouped = AdamW::with_groups(groups, params).unwrap();
    let mut plain = AdamW::new(vec![("c".into(), c.clone())], AdamWParams { lr: 16e-2, ..params }).unwrap();
    for step in 0..5 {
        let g = common::randn(&mut common::rng(10 + step), &[12], DType::F64);
        let (ga, gb, gc) = (grads_for(&a, &g), grads_for(&b, &g), grads_for(&c, &g));
        let mut both = ga;
        both.insert(b.as_tensor(), gb.get(b.as_tensor()).unwrap().clone());
        grouped.step(&both).unwrap();
        plain.step(&gc).unwrap();
    }
    assert_eq!(common::values(b.as_tensor()), common::values(c.as_tensor()), "scale 16 = lr x 16");
    assert_ne!(common::values(a.as_tensor()), common::values(b.as_tensor()));
    let bad = vec![ParamGroup { name: "zero".into(), vars: vec![("a".into(), a)], lr_scale: 0.0 }];
    let err = AdamW::with_groups(bad, params).err().expect("a zero scale is refused").to_string();
    assert!(err.contains("zero"), "{err}");
}
