"""Write .ci/mutants/*.patch: each one plausible learner mistake in one task's solution.

A learner's code is rarely a todo!() stub; it is code that is almost right. Each entry below
plants one such mistake (a text replacement in solutions/<task>.rs) and is written as a unified
diff against exercises/<task>.rs, where .ci/mutants.sh puts the solution before applying it. CI
fails if any mutant passes its task's graders. Run this again after changing a solution the
patches touch (it refuses a replacement whose text is not found exactly once):

    python3 scripts/make_mutants.py
"""
import os, subprocess, tempfile

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
M = [
 ("t01_lora_layer","scaling-r-over-alpha","scaling is r / alpha instead of alpha / r",
  "        alpha / r as f64\n","        r as f64 / alpha\n"),
 ("t01_lora_layer","rslora-ignored","rsLoRA's alpha / sqrt(r) computed as alpha / r",
  "        alpha / (r as f64).sqrt()\n","        alpha / r as f64\n"),
 ("t01_lora_layer","b-random","B initialised at random instead of zero",
  "        let b = Tensor::zeros((out_features, r), dtype, device)?;\n",
  "        let b = Tensor::randn(0f32, 0.02, (out_features, r), device)?.to_dtype(dtype)?;\n"),
 ("t01_lora_layer","dropout-on-output","dropout applied to the adapter's output instead of its input",
  """        if train && self.dropout > 0.0 {
            h = candle_nn::ops::dropout(&h, self.dropout)?;
        }
        let h = h.broadcast_matmul(&self.a.tensor().t()?)?; // [..., r]
        let h = h.broadcast_matmul(&self.b.tensor().t()?)?; // [..., out]
""","""        let h = h.broadcast_matmul(&self.a.tensor().t()?)?; // [..., r]
        let mut h = h.broadcast_matmul(&self.b.tensor().t()?)?; // [..., out]
        if train && self.dropout > 0.0 {
            h = candle_nn::ops::dropout(&h, self.dropout)?;
        }
"""),
 ("t02_linear_with_lora","adapter-dropped","forward returns the base layer alone",
  "        Ok((base + update)?)\n","        let _ = update;\n        Ok(base)\n"),
 ("t02_linear_with_lora","bias-lost","the base bias is left out of the forward pass",
  "        let base = linear_forward(x, &self.weight, self.bias.as_ref())?;\n",
  "        let base = linear_forward(x, &self.weight, None)?;\n"),
 ("t03_inject","suffix-without-dot","a target matches any name that ends with it, not whole name parts",
  '    name == target || name.ends_with(&format!(".{target}"))\n','    name.ends_with(target)\n'),
 ("t03_inject","all-linear-adapts-head",'"all-linear" also adapts the output head',
  "            names.iter().filter(|n| Some(n.as_str()) != head.as_deref()).collect()\n",
  "            names.iter().collect()\n"),
 ("t03_inject","norms-stay-trainable","freeze_base_model freezes the linears but not the other weights",
  "    for (_, p) in model.params_mut() {\n        p.freeze();\n    }\n","    let _ = model.params_mut();\n"),
 ("t04_save_load","load-keeps-base-trainable","loading does not freeze the base",
  "    freeze_base_model(model);\n    Ok(())\n","    Ok(())\n"),
 ("t04_save_load","load-by-file-targets","loading places adapters by the file's targets even when the model has adapters elsewhere",
  "    let modules = if already.is_empty() { find_target_modules(model, &config.target_modules)? } else { already };\n",
  "    let _ = already;\n    let modules = find_target_modules(model, &config.target_modules)?;\n"),
 ("t04_save_load","a-transposed","A written transposed ([in, r]) and transposed back on load",
  "        tensors.insert(peft_key(&name, LoraMatrix::A), lora.a().tensor().clone());\n",
  "        tensors.insert(peft_key(&name, LoraMatrix::A), lora.a().tensor().t()?.contiguous()?);\n",
  "        for (matrix, shape) in [(LoraMatrix::A, [config.r, *in_f]), (LoraMatrix::B, [*out_f, config.r])] {\n",
  "        for (matrix, shape) in [(LoraMatrix::A, [*in_f, config.r]), (LoraMatrix::B, [*out_f, config.r])] {\n",
  "                Ok(t) => pair.push(t),\n",
  "                Ok(t) => pair.push(if matrix == LoraMatrix::A { t.t()?.contiguous()? } else { t }),\n"),
 ("t04_save_load","keys-without-prefix","keys written without PEFT's base_model.model. prefix",
  "        tensors.insert(peft_key(&name, LoraMatrix::A), lora.a().tensor().clone());\n        tensors.insert(peft_key(&name, LoraMatrix::B), lora.b().tensor().clone());\n",
  "        tensors.insert(format!(\"{name}.lora_A.weight\"), lora.a().tensor().clone());\n        tensors.insert(format!(\"{name}.lora_B.weight\"), lora.b().tensor().clone());\n"),
 ("t05_data","prompt-not-masked","the prompt's tokens are trained on",
  "    let mut labels: Vec<i64> = vec![IGNORE_INDEX; prompt.len()];\n",
  "    let mut labels: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();\n"),
 ("t05_data","no-eos","no EOS token after the response",
  "    input_ids.push(eos_id);\n","",
  "    labels.push(i64::from(eos_id));\n",""),
 ("t05_data","left-padding","batches padded on the left",
  "        ids.extend(e.input_ids.iter().copied().chain(std::iter::repeat_n(pad_id, pad)));\n        labels.extend(e.labels.iter().copied().chain(std::iter::repeat_n(IGNORE_INDEX, pad)));\n        mask.extend(std::iter::repeat_n(1u32, e.input_ids.len()).chain(std::iter::repeat_n(0, pad)));\n",
  "        ids.extend(std::iter::repeat_n(pad_id, pad).chain(e.input_ids.iter().copied()));\n        labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad).chain(e.labels.iter().copied()));\n        mask.extend(std::iter::repeat_n(0u32, pad).chain(std::iter::repeat_n(1, e.input_ids.len())));\n"),
 ("t06_train","warmup-from-zero","warmup starts at 0 instead of peak / warmup",
  "        return s.peak_lr * (step + 1) as f64 / s.warmup_steps as f64;\n",
  "        return s.peak_lr * step as f64 / s.warmup_steps as f64;\n"),
 ("t06_train","label-offset","the hidden state at t is scored against the label at t, not t + 1",
  "    let labels: Vec<i64> = batch.labels.narrow(1, 1, t - 1)?.flatten_all()?.to_vec1()?;\n",
  "    let labels: Vec<i64> = batch.labels.narrow(1, 0, t - 1)?.flatten_all()?.to_vec1()?;\n"),
 ("t06_train","lr-not-applied","the schedule is computed and recorded but never given to the optimizer",
  "    state.opt.set_lr(lr);\n",""),
 ("t06_train","accumulation-sums","gradients of the micro-batches summed instead of averaged",
  "        let g = (loss / k as f64)?.backward()?;\n",
  "        let g = loss.backward()?;\n"),
 ("t06_train","clipping-not-applied","the norm is measured but the configured clipping never applied",
  "    let grad_norm = clip_grad_norm(&mut grads, &state.vars, cfg.max_grad_norm.unwrap_or(f64::INFINITY))?;\n",
  "    let grad_norm = clip_grad_norm(&mut grads, &state.vars, f64::INFINITY)?;\n"),
 ("t06_train","weight-decay-ignored","the configured weight decay is not given to AdamW",
  "    let params = AdamWParams { lr: lr_at(&cfg.schedule, 0), weight_decay: cfg.weight_decay, ..Default::default() };\n",
  "    let params = AdamWParams { lr: lr_at(&cfg.schedule, 0), ..Default::default() };\n"),
 ("t06_train","no-step-0-validation","the starting point is never validated: the first validation after training is the first best",
  "        let val_loss = evaluate_loss(model, val, cfg.batch_size, pad_id)?;\n        history.val.push(EvalRecord { step: 0, val_loss });\n        history.best = Some((0, val_loss));\n",
  ""),
 ("t06_train","divergence-unchecked","validations are never checked for divergence",
  "    state.guard.after_eval(step, val_loss, state.history.best)?;\n",""),
 ("t06_train","micro-batches-restart-each-step","a step's micro-batches start at batch `step`, so consecutive steps overlap",
  "        let micro = step * k + j;\n","        let micro = step + j;\n"),
 ("t06_train","checkpoint-while-suspect","a checkpoint is written even after a validation far above the best",
  "    if trainee.keeps_files() && !state.guard.suspect() {\n","    if trainee.keeps_files() {\n"),
 ("t06_train","optimizer-before-load","on resume the optimizer is built before loading, so it holds the Vars loading replaced",
  "    if let Some(state) = if cfg.resume { read_checkpoint_state(&cfg.out_dir)? } else { None } {\n        // Loading replaces the trained Vars, so the optimizer is built after it.\n        trainee.load(model, &checkpoint_dir(&cfg.out_dir))?;\n        (step, history) = state;\n    }\n    let mut opt = AdamW::with_groups(trainee.groups(model)?, params)?;\n",
  "    let mut opt = AdamW::with_groups(trainee.groups(model)?, params)?;\n    if let Some(state) = if cfg.resume { read_checkpoint_state(&cfg.out_dir)? } else { None } {\n        trainee.load(model, &checkpoint_dir(&cfg.out_dir))?;\n        (step, history) = state;\n    }\n"),
 ("t07_eval","perplexity-without-exp","perplexity returns the mean loss",
  "    Ok(evaluate_loss(model, examples, batch_size, pad_id)?.exp())\n",
  "    evaluate_loss(model, examples, batch_size, pad_id)\n"),
 ("t07_eval","bleu-unclipped","n-gram matches not clipped by the reference counts",
  "            matched[n - 1] += ngrams(&h, n).iter().map(|(g, c)| (*c).min(*best.get(g).unwrap_or(&0))).sum::<usize>();\n",
  "            matched[n - 1] += ngrams(&h, n).iter().map(|(g, c)| if best.contains_key(g) { *c } else { 0 }).sum::<usize>();\n"),
 ("t07_eval","bleu-no-brevity-penalty","no brevity penalty for short hypotheses",
  "    let bp = if hyp_len > ref_len { 1.0 } else { (1.0 - ref_len as f64 / hyp_len.max(1) as f64).exp() };\n",
  "    let bp = if hyp_len > ref_len || hyp_len <= ref_len { 1.0 } else { 0.0 };\n"),
 ("t07_eval","sampled-not-greedy","generations sampled at temperature 1 instead of greedy",
  "        let ids = generate(model, &encode(tok, prompt)?, opts)?.ids;\n",
  "        let sampled = crate::inference::generate::Sampling { temperature: 1.0, ..opts.sampling.clone() };\n        let ids = generate(model, &encode(tok, prompt)?, &GenerateOptions { sampling: sampled, ..opts.clone() })?.ids;\n"),
 ("t08_merge","delta-without-scaling","the merged update is B A without the scaling",
  "    Ok((b.matmul(&a)? * lora.scaling())?)\n","    Ok(b.matmul(&a)?)\n"),
 ("t08_merge","unmerge-adds","unmerging adds the update again instead of subtracting it",
  "        let base = (w.to_dtype(DType::F32)? - lora_delta(&lora)?)?.to_dtype(w.dtype())?;\n",
  "        let base = (w.to_dtype(DType::F32)? + lora_delta(&lora)?)?.to_dtype(w.dtype())?;\n"),
 ("t09_qlora","low-nibble-first","two codes packed low nibble first",
  "        let codes = indices.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();\n",
  "        let codes = indices.chunks(2).map(|p| (p[1] << 4) | p[0]).collect();\n"),
 ("t09_qlora","nearest-level-off-by-one","the level above the nearest one",
  "            return i as u8;\n","            return (i + 1).min(15) as u8;\n"),
 ("t10_multi_lora","per-row-ignores-scale","each row's adapter applied without its scaling",
  "    Ok(z.matmul(&b_rows.transpose(1, 2)?)?.broadcast_mul(&s_rows)?)\n",
  "    let _ = s_rows;\n    Ok(z.matmul(&b_rows.transpose(1, 2)?)?)\n"),
 ("t10_multi_lora","linear-without-sqrt","the linear combination puts the whole weight into both A and B",
  "                let c = (w * l.scaling()).sqrt();\n","                let c = w * l.scaling();\n"),
 ("t11_mixed","loraplus-on-a","LoRA+'s ratio given to A's group instead of B's",
  '    [("lora_A", a, 1.0), ("lora_B", b, loraplus_ratio), ("modules_to_save", full, full_scale)]\n',
  '    [("lora_A", a, loraplus_ratio), ("lora_B", b, 1.0), ("modules_to_save", full, full_scale)]\n'),
 ("t11_mixed","modules-by-substring","modules_to_save matched anywhere in the name, not as PEFT's suffix",
  "            if module_of(&name).ends_with(entry.as_str()) {\n",
  "            if name.contains(entry.as_str()) {\n"),
]
out='.ci/mutants'
for f in os.listdir(out):
    if f.endswith('.patch'): os.remove(os.path.join(out,f))
for m in M:
    task,name,why=m[0],m[1],m[2]
    pairs=list(zip(m[3::2],m[4::2]))
    src=open(f'solutions/{task}.rs').read()
    new=src
    for a,b in pairs:
        assert new.count(a)==1,(task,name,a,new.count(a))
        new=new.replace(a,b)
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(f'{d}/a/exercises'); os.makedirs(f'{d}/b/exercises')
        open(f'{d}/a/exercises/{task}.rs','w').write(src); open(f'{d}/b/exercises/{task}.rs','w').write(new)
        diff=subprocess.run(['diff','-u','--label',f'a/exercises/{task}.rs','--label',f'b/exercises/{task}.rs',f'a/exercises/{task}.rs',f'b/exercises/{task}.rs'],cwd=d,capture_output=True,text=True).stdout
    open(f'{out}/{task}--{name}.patch','w').write(f'mistake: {why}\n'+diff)
print(len(M),'mutants')
