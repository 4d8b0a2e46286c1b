//! Write the adapters that `scripts/make_fixtures.py` loads with PEFT (`PeftModel.from_pretrained`)
//! to prove that an adapter saved by this crate means the same thing in Python:
//!
//! ```text
//! cargo run --example interop_adapters            # -> tests/fixtures/peft/<model>-from-rust/
//! python scripts/make_fixtures.py                 # PEFT's logits for them, beside them
//! ```
//!
//! Each adapter is r = 4, alpha = 8 on the tiny random fixtures, with seeded random A and B (a
//! fresh B = 0 would not test anything).

use anyhow::Result;
use candle_core::{DType, Tensor};
use lora_from_scratch::models::load::{load_model, LoadOptions};
use lora_from_scratch::{get_lora_parameters, inject_lora, save_lora_weights, LoraConfig};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

fn main() -> Result<()> {
    for (fixture, targets) in
        [("tiny-gpt2", vec!["c_attn", "mlp.c_proj"]), ("tiny-llama", vec!["q_proj", "v_proj", "down_proj"])]
    {
        let mut m = load_model(&format!("tests/fixtures/{fixture}"), &LoadOptions::default())?;
        let cfg = LoraConfig::new(4, 8.0, &targets);
        inject_lora(m.model.as_mut(), &cfg)?;
        let mut rng = StdRng::seed_from_u64(7);
        let normal = Normal::new(0.0f32, 0.1)?;
        for (_, v) in get_lora_parameters(m.model.as_ref()) {
            let vals: Vec<f32> = (0..v.elem_count()).map(|_| normal.sample(&mut rng)).collect();
            v.set(&Tensor::from_vec(vals, v.dims(), v.device())?.to_dtype(DType::F32)?)?;
        }
        let out = format!("tests/fixtures/peft/{fixture}-from-rust");
        save_lora_weights(m.model.as_ref(), &cfg, out.as_ref())?;
        println!("wrote {out}");
    }
    Ok(())
}
