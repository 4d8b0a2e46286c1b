//! The bf16 matmul (`compute::bf16`) and the fused ops over a bf16 frozen weight, which is what
//! `--bf16` runs on the CPU: the base's matrices in bf16, activations, adapters and the loss in
//! f32.
//!
//! Both paths (the AVX512_BF16 kernel, the portable one) round the activations to bf16 and sum
//! exact products in f32: each is held to the same rounded f64 reference here. The kernel's tests
//! show as ignored, with the reason, on a CPU without the instruction (build.rs tells the build);
//! the portable path's run everywhere. The fused ops run on the CPU's own path here and with the
//! portable path forced in `tests/bf16_portable.rs`.

mod bf16_cases;
mod common;

use bf16_cases::check_matmul;
use candle_core::{DType, Tensor};
use common::{proptest_config, randn, rng};
use lora_from_scratch::compute::bf16::{kernel_available, path, Path, Product, KERNEL_ENV};
use lora_from_scratch::compute::ops;
use proptest::prelude::*;

/// The kernel's tests stop with a clear message when the binary was built on a CPU with
/// AVX512_BF16 and runs on one without (a target directory carried to another host).
#[cfg(build_host_has_avx512bf16)]
fn needs_kernel() {
    assert!(
        kernel_available(),
        "these tests were built on a CPU with AVX512_BF16 and run on one without: rebuild here (touch build.rs)"
    );
}

/// Shapes past one k block (384 pairs) and many row and column panels, as in SmolLM2's MLP.
const BIG: [((usize, usize, usize), Product); 3] =
    [((37, 70, 1537), Product::XWt), ((25, 1537, 66), Product::XW), ((50, 192, 576), Product::XW)];

proptest! {
    #![proptest_config(proptest_config(48))]

    /// Every shape, including partial tiles (12 x 32), odd k, one-element dims and the few-rows
    /// path of decoding (up to 8 rows of `x W^T`).
    #[test]
    #[cfg_attr(not(build_host_has_avx512bf16), ignore = "this CPU has no AVX512_BF16: the portable path's tests run instead")]
    fn kernel_sums_the_rounded_products(seed in 0u64..1000, m in 1usize..30, out_f in 1usize..70, in_f in 1usize..70,
                                        xw in any::<bool>(), accumulate in any::<bool>()) {
        #[cfg(build_host_has_avx512bf16)]
        needs_kernel();
        let product = if xw { Product::XW } else { Product::XWt };
        check_matmul(Path::Kernel, seed, (m, out_f, in_f), product, accumulate).map_err(TestCaseError::fail)?;
    }

    /// The same property on the portable path, on every CPU.
    #[test]
    fn portable_sums_the_rounded_products(seed in 0u64..1000, m in 1usize..30, out_f in 1usize..70, in_f in 1usize..70,
                                          xw in any::<bool>(), accumulate in any::<bool>()) {
        let product = if xw { Product::XW } else { Product::XWt };
        check_matmul(Path::Portable, seed, (m, out_f, in_f), product, accumulate).map_err(TestCaseError::fail)?;
    }
}

#[test]
#[cfg_attr(
    not(build_host_has_avx512bf16),
    ignore = "this CPU has no AVX512_BF16: the portable path's tests run instead"
)]
fn kernel_is_exact_past_one_block() {
    #[cfg(build_host_has_avx512bf16)]
    needs_kernel();
    for (shape, product) in BIG {
        check_matmul(Path::Kernel, 7, shape, product, false).unwrap();
        check_matmul(Path::Kernel, 8, shape, product, true).unwrap();
    }
}

#[test]
fn portable_is_exact_past_one_block() {
    for (shape, product) in BIG {
        check_matmul(Path::Portable, 7, shape, product, false).unwrap();
        check_matmul(Path::Portable, 8, shape, product, true).unwrap();
    }
}

/// The path the library takes by itself: the kernel exactly where the CPU has it (this binary
/// never forces a path, and CI runs it with and without `LORA_FROM_SCRATCH_BF16_KERNEL=off`).
#[test]
fn the_path_is_the_kernel_where_the_cpu_has_it() {
    let forced_off = std::env::var(KERNEL_ENV)
        .is_ok_and(|v| ["off", "0", "false"].contains(&v.trim().to_ascii_lowercase().as_str()));
    let want = if kernel_available() && !forced_off { Path::Kernel } else { Path::Portable };
    assert_eq!(path(), want, "{KERNEL_ENV}={:?}, AVX512_BF16: {}", std::env::var(KERNEL_ENV), kernel_available());
}

/// `LORA_FROM_SCRATCH_BF16_KERNEL` as a user sets it, in a child process (the choice is made
/// once per process): off / 0 / false force the portable path, on / 1 keep the CPU's own, and a
/// value that is neither says so on stderr.
#[test]
fn the_environment_variable_picks_the_path() {
    if std::env::var_os("BF16_ENV_CHILD").is_some() {
        let want = std::env::var("BF16_ENV_CHILD").unwrap();
        assert_eq!(format!("{:?}", path()), want, "{KERNEL_ENV}={:?}", std::env::var(KERNEL_ENV));
        return;
    }
    let own = if kernel_available() { "Kernel" } else { "Portable" };
    for (value, want, warns) in [
        ("off", "Portable", false),
        ("0", "Portable", false),
        ("FALSE", "Portable", false),
        ("on", own, false),
        ("1", own, false),
        ("portable", own, true),
    ] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "the_environment_variable_picks_the_path", "--nocapture", "--test-threads", "1"])
            .env(KERNEL_ENV, value)
            .env("BF16_ENV_CHILD", want)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{KERNEL_ENV}={value}: the child failed:\n{stderr}");
        assert_eq!(stderr.contains(KERNEL_ENV), warns, "{KERNEL_ENV}={value}: stderr was:\n{stderr}");
    }
}

#[test]
fn fused_ops_over_a_bf16_weight_match_f32() {
    bf16_cases::fused_ops_over_a_bf16_weight_match_f32();
}

#[test]
fn pack_many_prepares_each_product() {
    bf16_cases::pack_many_prepares_each_product();
}

#[test]
fn head_cross_entropy_over_a_bf16_head_matches_f32() {
    bf16_cases::head_cross_entropy_over_a_bf16_head_matches_f32();
}

/// Bad shapes are errors that name them, not panics.
#[test]
fn a_wrong_input_width_is_an_error() {
    let (w16, _) = bf16_cases::bf16_weight(1, &[8, 6]);
    let x = randn(&mut rng(2), &[3, 5], DType::F32);
    let err = ops::linear_forward(&x, &w16, None).unwrap_err().to_string();
    assert!(err.contains("[..., 6]") && err.contains("[3, 5]"), "{err}");
}

/// Full fine-tuning under `--bf16` on the CPU trains f32 weights (the f32 master copy), and the
/// frozen base stays bf16 where LoRA trains beside it.
#[test]
fn full_fine_tuning_of_a_bf16_model_trains_f32_weights() {
    use lora_from_scratch::models::load::{load_model, LoadOptions};
    let opts = LoadOptions { dtype: DType::BF16, ..Default::default() };
    let mut m = load_model("tests/fixtures/tiny-llama", &opts).unwrap();
    let before: Vec<DType> = m.model.linears().iter().map(|(_, s)| s.base_weight().unwrap().dtype()).collect();
    assert!(before.iter().all(|&d| d == DType::BF16), "a bf16 model's matrices are bf16: {before:?}");
    let vars = lora_from_scratch::experiments::full::unfreeze_all(m.model.as_mut()).unwrap();
    assert!(!vars.is_empty());
    for (name, v) in &vars {
        assert_eq!(v.dtype(), DType::F32, "{name} is trained in {:?}", v.dtype());
    }
    let ids = Tensor::new(&[[3u32, 17, 5, 9]], &candle_core::Device::Cpu).unwrap();
    let loss = m.model.forward(&ids, None, true).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert!(vars.iter().all(|(_, v)| grads.get(v.as_tensor()).is_some()), "every trained weight gets a gradient");
}
