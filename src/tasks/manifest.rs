//! The ordered list of the tutorial's tasks, after rustlings' `info.toml`: the one place that
//! says which tasks exist, in which order, and where their four files are. A test checks it
//! against the files on disk, and `cargo run --example progress` walks it.

/// One task of the tutorial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// `tNN_name`: the file name in exercises/, solutions/, tests/ and book/src/.
    pub name: &'static str,
    /// The source tutorial's numbering ("1.1").
    pub number: &'static str,
    /// What the task builds.
    pub title: &'static str,
    /// Hints in levels for a learner who is stuck: a nudge (where to look), the key idea, then
    /// nearly the answer. `cargo run --example progress -- --hint N` shows the first N.
    pub hints: &'static [&'static str],
}

impl Task {
    /// The stub the learner fills in.
    pub fn exercise(&self) -> String {
        format!("exercises/{}.rs", self.name)
    }

    /// The reference implementation.
    pub fn solution(&self) -> String {
        format!("solutions/{}.rs", self.name)
    }

    /// The grader, also the name of the cargo test target.
    pub fn test(&self) -> String {
        format!("tests/{}.rs", self.name)
    }

    /// The book chapter.
    pub fn chapter(&self) -> String {
        format!("book/src/{}.md", self.name)
    }

    /// The command that grades this task.
    pub fn grade_command(&self) -> String {
        format!("cargo test --features exercises --test {}", self.name)
    }
}

/// Every task, in the order a learner does them.
pub const TASKS: &[Task] = &[
    Task {
        name: "t01_lora_layer",
        number: "1.1",
        title: "LoraLayer: A [r, in], B [out, r], scaling alpha / r",
        hints: &[
            "Write lora_scaling first, then from_tensors, new and forward, in that order; reread \"Why alpha / r\", \"How A starts\" and \"The forward pass\" in the t01 chapter.",
            "The scaling is alpha / r (alpha / sqrt(r) with rsLoRA); A is [r, in], drawn from the rng (uniform on [-1/sqrt(in), 1/sqrt(in)], or normal with std 1/r), and B is [out, r] of zeros; forward is scaling * (x A^T) B^T, with dropout on x, before A, in training only.",
            "from_tensors: config.validate()?, check a.dims2() and b.dims2() against config.r (else LoraError::shape(\"lora_A\", ...) or \"lora_B\"), wrap both in Param::trainable and take lora_scaling(config.alpha, r, config.use_rslora); new: Uniform::new(-bound, bound) or Normal::new(0.0, 1.0 / r as f32), dist.sample_iter(rng).take(r * in).collect(), Tensor::from_vec(values, (r, in), device)?.to_dtype(dtype)?, Tensor::zeros((out, r), dtype, device)?, then Self::from_tensors. forward: check x.dims().last(), cast x to A's dtype, candle_nn::ops::dropout if train && dropout > 0, then h.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?, times self.scaling, cast back to x's dtype.",
        ],
    },
    Task {
        name: "t02_linear_with_lora",
        number: "1.2",
        title: "LinearWithLora: a frozen base layer plus the adapter",
        hints: &[
            "Reread \"What freezing means in candle\" in the t02 chapter: to candle, a frozen weight is simply a tensor that is not a Var.",
            "new checks weight.dims2() == (out, in) against lora.out_features() and lora.in_features(), and the bias against [out], then keeps detached copies; forward is the base output x W0^T + b plus the adapter's output.",
            "Store weight.detach() and bias.map(Tensor::detach) in new (a wrong bias: LoraError::shape(\"base bias\", ...)); forward is Ok((linear_forward(x, &self.weight, self.bias.as_ref())? + self.lora.forward(x, train)?)?), with linear_forward from crate::compute::ops.",
        ],
    },
    Task {
        name: "t03_inject",
        number: "1.3",
        title: "inject_lora and the helpers that inspect an adapted model",
        hints: &[
            "Write target_matches and find_target_modules first, then the small helpers, and inject_lora after them; reread \"Injection without setattr\" and \"Matching names as PEFT does\" in the t03 chapter.",
            "A target selects a name when name == target or the name ends with \".\" followed by the target; inject_lora validates the config and finds every target before it touches a slot, draws every A from one StdRng seeded with config.seed in model order, and ends with freeze_base_model and count_parameters.",
            "In inject_lora, refuse a selected slot whose slot.adapter().is_some() (LoraError::module(name, \"already has a LoRA adapter\")); then for each selected (name, slot) of model.linears_mut(), let (i, o) = slot.features() and call slot.set_adapter(LoraLayer::new(i, o, config, &mut rng, DType::F32, slot.device())?)?. The helpers walk model.linears() with slot.named_params() and slot.adapter() (A and B through Param::var), freeze with Linear::freeze on plain slots and Param::freeze on model.params_mut(), and check_gradients takes the f64 L2 norm of grads.get(var.as_tensor()).",
        ],
    },
    Task {
        name: "t04_save_load",
        number: "1.4",
        title: "Adapters as PEFT's keyed tensors and back; save_lora_weights / load_lora_weights",
        hints: &[
            "Start with lora_tensors and adapter_config (\"PEFT's keys\" in the t04 chapter), then save_lora_weights; write load_lora_tensors last, after rereading \"Never half-load\".",
            "Keys come from peft_key(module, LoraMatrix::A) and peft_key(module, LoraMatrix::B); loading first collects every TensorProblem (missing, wrong shape, corrupt, unexpected) for all modules, returns them together in LoraError::AdapterMismatch, and only then builds and installs the layers.",
            "save_lora_weights is write_adapter(dir, &adapter_config(model, config), &lora_tensors(model, config)?); adapter_config is AdapterConfig::from_lora_config(&saved, &model.name_or_path()) with the short target names when find_target_modules selects exactly the adapted modules with them, and fan_in_fan_out = model.conv1d_layout(). load_lora_tensors asks file.tensor(&key, &shape, DType::F32, device) for A [r, in] and B [out, r] of every module, compares file.keys() with the expected keys plus other_keys, then builds LoraLayer::from_tensors and slot.with_adapter(lora)? for every module before assigning any slot, and ends with freeze_base_model; load_lora_weights is AdapterFile::read(dir)?, file.lora_config()? and load_lora_tensors(model, &config, &file, &[]).",
        ],
    },
    Task {
        name: "t05_data",
        number: "2.1",
        title: "Training examples: label masking, truncation, padding and batching",
        hints: &[
            "Reread \"Which tokens the loss sees\" and \"Padding and the mask\" in the t05 chapter: labels line up with the input ids, and every position not trained on is IGNORE_INDEX.",
            "tokenize_example: ids = prompt, response, eos; labels = IGNORE_INDEX for each prompt token, then each response token as i64, then eos as i64; both cut to max_len. collate pads every example on the right to the longest one.",
            "Count truncated = input_ids.len().saturating_sub(max_len) before Vec::truncate(max_len) on both vectors; in collate, build three flat Vecs, extending each example with std::iter::repeat_n(pad_id, pad), repeat_n(IGNORE_INDEX, pad), and for the mask repeat_n(1u32, len) then repeat_n(0, pad), and turn each into Tensor::from_vec(v, (examples.len(), len), device)?.",
        ],
    },
    Task {
        name: "t06_train",
        number: "2.2",
        title: "Training: schedule, clipping, the causal LM loss, the loop over a Trainee, checkpoints",
        hints: &[
            "Start with lr_at and clip_grad_norm, then causal_lm_loss and evaluate_loss; write train last, following the rules of \"The training loop\" in the t06 chapter one by one.",
            "In causal_lm_loss the hidden state at position t predicts the label at t + 1: pair hidden states 0..t-1 with labels 1..t and keep only labels that are not IGNORE_INDEX. In train, set the rate to lr_at(step), divide each micro-batch loss by grad_accum before backward, sum the gradients per Var, clip, then step.",
            "causal_lm_loss: hidden = model.forward_hidden(&batch.input_ids, None, train)?, labels = batch.labels.narrow(1, 1, t - 1)?, pick the supervised rows of hidden.reshape((b * t, d))? with index_select and return (model.head_loss(&rows, &targets)?, rows.len()); evaluate_loss runs over examples.chunks(batch_size) inside with_frozen_adapters. train: read_checkpoint_state and trainee.load(model, &checkpoint_dir(..)) before AdamW::with_groups(trainee.groups(model)?, params) (then opt.load_state(&optimizer_state_path(..)) when resuming); micro-step m = step * grad_accum + k uses epoch_batches(n, batch_size, seed, m / per_epoch)[m % per_epoch]; put the summed gradients into the last GradStore (grads.insert), clip_grad_norm, opt.step, and at eval steps evaluate_loss, trainee.save to best_adapter_dir and save_checkpoint.",
        ],
    },
    Task {
        name: "t07_eval",
        number: "2.3",
        title: "evaluate_generation, perplexity and corpus BLEU",
        hints: &[
            "perplexity is one line on top of task 2.2; for corpus_bleu reread \"BLEU\" in the t07 chapter and count over the whole corpus before dividing anything.",
            "For each n in 1..=4, add to matches[n] the sum over hypothesis n-grams of min(count, the largest count of that n-gram in any one reference), and to totals[n] the number of hypothesis n-grams; BLEU = 100 * BP * exp(mean over n of ln(matches / totals)), with BP = exp(1 - r / c) unless c > r.",
            "perplexity is Ok(evaluate_loss(model, examples, batch_size, pad_id)?.exp()). In corpus_bleu use bleu_tokens and ngrams(&tokens, n) (n-gram -> count), keep the max count over references in a HashMap, add the closest reference length by the minimum of (len.abs_diff(h.len()), len), and return 0.0 if any matches[n] is 0. evaluate_generation: generate(model, &encode(tok, prompt)?, opts)?.ids, decode(tok, &ids)?, clean(..), serde_json::to_string of each Generated plus \"\\n\", then write_atomic(out, jsonl.as_bytes()).",
        ],
    },
    Task {
        name: "t08_merge",
        number: "3.1-3.2",
        title: "merge_lora_weights, unmerge_lora_weights and verify_merge",
        hints: &[
            "Reread \"The update an adapter stands for\" and \"Merging\" in the t08 chapter: compute and check everything first, change slots only at the end.",
            "The update is scaling * B A in f32, [out, in]; merging is W + update, back in W's dtype and checked finite, after which each adapted slot becomes a plain frozen Linear; unmerging subtracts the same update and wraps W in a LinearWithLora again.",
            "lora_delta is (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * lora.scaling())?. merge_lora_weights collects (name, new_w) over model.linears() from slot.base_weight()?, tests new_w.to_dtype(DType::F64)?.abs()?.sum_all()? for finiteness, then in model.linears_mut() keeps slot.adapter() cloned and sets *slot = LinearSlot::Linear(Linear::frozen(&w, slot.base_bias())?). verify_merge compares model.forward(ids, None, false)? before and after in f64 (max_all of the absolute difference) and calls unmerge_lora_weights when the check fails.",
        ],
    },
    Task {
        name: "t09_qlora",
        number: "ch. 1",
        title: "QLoRA: the NF4 code book, blockwise quantization with double quantization",
        hints: &[
            "Start with nf4_code_book (normal_quantile is given), then nearest_level; quantize works block by block of NF4_BLOCK values. Reread \"The code book\" and \"Quantizing a tensor\".",
            "offset = 1 - (1/30 + 1/32) / 2 and top = normal_quantile(offset); the positive levels are normal_quantile(p) / top for p = offset + (0.5 - offset) * i / 8, i = 0..8, the negative ones -normal_quantile(p) / top for p = offset + (0.5 - offset) * i / 7, i = 0..7, plus 0, sorted. nearest_level returns the first i with v <= (level[i] + level[i + 1]) / 2, else 15.",
            "quantize: values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?; per chunks(NF4_BLOCK), absmax = max |v| and each index nearest_level(&book, v / absmax) (the index of 0 when absmax is 0); pad an odd count, then pack (p[0] << 4) | p[1]; absmax_mean = mean of all absmax, and per chunks(ABSMAX_BLOCK) scale = max |a - mean| and code (127 * (a - mean) / scale).round().clamp(-127.0, 127.0) as i8. block_absmax is absmax_q[b] / 127 * absmax_scale[b / ABSMAX_BLOCK] + absmax_mean; dequantize reads byte >> 4 for even i and byte & 0x0f for odd i; storage_bytes is codes.len() + absmax_q.len() + 4 * absmax_scale.len() + 4.",
        ],
    },
    Task {
        name: "t10_multi_lora",
        number: "ch. 2",
        title: "Several adapters on one base: switching, combining, a batch of many adapters",
        hints: &[
            "per_row_lora and combine are plain tensor functions: write them first, then set_active, delete and add_weighted. Reread \"A batch of many adapters\" and \"Combining adapters\".",
            "per_row_lora gathers each row's A [batch, r, in], B [batch, out, r] and scale [batch, 1, 1] by its index in rows, then runs two batched matmuls; set_active builds every new slot (with_adapter for the adapter's modules, without_adapter for the others) before installing any of them.",
            "per_row_lora: a.index_select(rows, 0)?, b.index_select(rows, 0)?, scale.index_select(rows, 0)?.reshape(((), 1, 1))?, then x.matmul(&a_rows.transpose(1, 2)?)?.matmul(&b_rows.transpose(1, 2)?)?.broadcast_mul(&s_rows)?. combine: Linear sums a_i * c and b_i * c with c = (w * l.scaling()).sqrt(); Cat is Tensor::cat of the a_i * (w * scaling) along 0 and of the b_i along 1. add_weighted stores LoraLayer::from_tensors(&a, &b, &LoraConfig::new(rank, rank as f64, &[module])) with rank = a.dim(0)?.",
        ],
    },
    Task {
        name: "t11_mixed",
        number: "ch. 3",
        title: "LoRA mixed with full fine-tuning: modules_to_save, learning-rate groups, PEFT's format",
        hints: &[
            "Start with find_modules_to_save (reread \"Choosing the modules\"), then unfreeze_modules_to_save and mixed_groups; save_mixed and load_mixed reuse t04's functions.",
            "An entry selects a model parameter when its module (the name without its last part) ends with the entry, and a plain linear slot when the slot's name ends with it (an adapted slot is an error). The groups are lora_A at 1, lora_B at loraplus_ratio and modules_to_save at full_scale, empty ones dropped.",
            "For model.params() take the module with name.rsplit_once('.') and test ends_with(entry); for slots match LinearSlot::Linear(l) and push \"<name>.<param>\" for each of l.named_params(). Unfreeze with Param::unfreeze in params_mut and on l.weight / l.bias in linears_mut, returning p.var() cloned. save_mixed inserts PEFT_KEY_PREFIX + name into lora_tensors' map and sets adapter_config(..).modules_to_save before write_adapter; load_mixed checks each module key with file.tensor(&key, dims, dtype, device) (a problem becomes an AdapterMismatch), then calls load_lora_tensors(model, &lora, &file, &module_keys), then sets each value with Param::frozen(t).",
        ],
    },
];
