//! The ordered list of the tutorial's tasks, after rustlings' `info.toml`: the one place that
//! says which tasks exist, in which order, and where their four files are. A test checks it
//! against the files on disk, and `cargo run --example progress` walks it.

use super::lang::Lang;

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
    /// The title in Chinese, for a reader of the Chinese book (`book/zh/`).
    pub title_zh: &'static str,
    /// The same hints in Chinese, level for level; the sections they name are the Chinese
    /// chapter's headings.
    pub hints_zh: &'static [&'static str],
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
        self.chapter_in(Lang::En)
    }

    /// The book chapter in the edition of `lang`.
    pub fn chapter_in(&self, lang: Lang) -> String {
        format!("{}/{}.md", lang.book_dir(), self.name)
    }

    /// The title in `lang`.
    pub fn title_in(&self, lang: Lang) -> &'static str {
        match lang {
            Lang::En => self.title,
            Lang::Zh => self.title_zh,
        }
    }

    /// The hints in `lang`, from a nudge to nearly the answer.
    pub fn hints_in(&self, lang: Lang) -> &'static [&'static str] {
        match lang {
            Lang::En => self.hints,
            Lang::Zh => self.hints_zh,
        }
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
        title_zh: "LoraLayer：A [r, in]、B [out, r]，缩放因子 alpha / r",
        hints_zh: &[
            "先写 lora_scaling，再依次写 from_tensors、new 和 forward；重读 t01 章中的「为什么是 alpha / r」「A 如何初始化」和「前向传播」。",
            "缩放因子是 alpha / r（使用 rsLoRA 时为 alpha / sqrt(r)）；A 是 [r, in]，从 rng 中采样（在 [-1/sqrt(in), 1/sqrt(in)] 上均匀分布，或标准差为 1/r 的正态分布），B 是全零的 [out, r]；forward 是 scaling * (x A^T) B^T，dropout 作用在 x 上、位于 A 之前，且只在训练时启用。",
            "from_tensors：先 config.validate()?，再用 a.dims2() 和 b.dims2() 对照 config.r 检查（否则返回 LoraError::shape(\"lora_A\", ...) 或 \"lora_B\"），把两者都用 Param::trainable 包装，并取 lora_scaling(config.alpha, r, config.use_rslora)；new：Uniform::new(-bound, bound) 或 Normal::new(0.0, 1.0 / r as f32)，dist.sample_iter(rng).take(r * in).collect()，Tensor::from_vec(values, (r, in), device)?.to_dtype(dtype)?，Tensor::zeros((out, r), dtype, device)?，最后调用 Self::from_tensors。forward：检查 x.dims().last()，把 x 转成 A 的数据类型，若 train && dropout > 0 则调用 candle_nn::ops::dropout，然后 h.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?，乘以 self.scaling，再转回 x 的数据类型。",
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
        title_zh: "LinearWithLora：冻结的基座层加上适配器",
        hints_zh: &[
            "重读 t02 章中的「冻结在 candle 中意味着什么」：对 candle 来说，冻结的权重就是一个不是 Var 的张量。",
            "new 用 lora.out_features() 和 lora.in_features() 检查 weight.dims2() == (out, in)，并检查偏置是否为 [out]，然后保存 detach 之后的副本；forward 是基座输出 x W0^T + b 加上适配器的输出。",
            "在 new 中保存 weight.detach() 和 bias.map(Tensor::detach)（偏置不对时返回 LoraError::shape(\"base bias\", ...)）；forward 是 Ok((linear_forward(x, &self.weight, self.bias.as_ref())? + self.lora.forward(x, train)?)?)，其中 linear_forward 来自 crate::compute::ops。",
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
        title_zh: "inject_lora 以及检查已适配模型的辅助函数",
        hints_zh: &[
            "先写 target_matches 和 find_target_modules，再写那些小的辅助函数，最后写 inject_lora；重读 t03 章中的「没有 setattr 的注入」和「像 PEFT 一样匹配名称」。",
            "当 name == target，或名称以 \".\" 加上该目标结尾时，目标就选中该名称；inject_lora 在触碰任何槽位之前先校验配置并找出所有目标，按模型顺序从同一个以 config.seed 为种子的 StdRng 中抽取每个 A，最后调用 freeze_base_model 和 count_parameters。",
            "在 inject_lora 中，拒绝 slot.adapter().is_some() 的被选中槽位（LoraError::module(name, \"already has a LoRA adapter\")）；然后对 model.linears_mut() 中每个被选中的 (name, slot)，取 let (i, o) = slot.features()，并调用 slot.set_adapter(LoraLayer::new(i, o, config, &mut rng, DType::F32, slot.device())?)?。各辅助函数用 slot.named_params() 和 slot.adapter()（A 和 B 通过 Param::var 取得）遍历 model.linears()；冻结时对普通槽位用 Linear::freeze，对 model.params_mut() 用 Param::freeze；check_gradients 计算 grads.get(var.as_tensor()) 的 f64 L2 范数。",
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
        title_zh: "把适配器转成 PEFT 的带键张量并转回来；save_lora_weights / load_lora_weights",
        hints_zh: &[
            "先写 lora_tensors 和 adapter_config（见 t04 章中的「PEFT 的键名」），再写 save_lora_weights；重读「绝不加载一半」之后，最后写 load_lora_tensors。",
            "键名来自 peft_key(module, LoraMatrix::A) 和 peft_key(module, LoraMatrix::B)；加载时先为所有模块收集每一个 TensorProblem（缺失、形状错误、损坏、多余），把它们一起放进 LoraError::AdapterMismatch 返回，只有在此之后才构建并安装各层。",
            "save_lora_weights 就是 write_adapter(dir, &adapter_config(model, config), &lora_tensors(model, config)?)；adapter_config 是 AdapterConfig::from_lora_config(&saved, &model.name_or_path())，当 find_target_modules 用短目标名恰好选中那些被适配的模块时就写短目标名，并设 fan_in_fan_out = model.conv1d_layout()。load_lora_tensors 对每个模块用 file.tensor(&key, &shape, DType::F32, device) 取 A [r, in] 和 B [out, r]，把 file.keys() 与期望的键加上 other_keys 进行比较，然后在给任何槽位赋值之前，先为每个模块构建 LoraLayer::from_tensors 和 slot.with_adapter(lora)?，最后调用 freeze_base_model；load_lora_weights 依次是 AdapterFile::read(dir)?、file.lora_config()? 和 load_lora_tensors(model, &config, &file, &[])。",
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
        title_zh: "训练样本：标签掩码、截断、填充与组批",
        hints_zh: &[
            "重读 t05 章中的「损失看到哪些词元」和「填充与掩码」：标签与输入 id 逐位对齐，每个不参与训练的位置都是 IGNORE_INDEX。",
            "tokenize_example：ids = prompt、response、eos；labels = 每个提示词元对应一个 IGNORE_INDEX，然后是每个回答词元（转为 i64），最后是 eos（转为 i64）；两者都截断到 max_len。collate 把每个样本在右侧填充到最长样本的长度。",
            "在对两个向量调用 Vec::truncate(max_len) 之前，先算出 truncated = input_ids.len().saturating_sub(max_len)；在 collate 中构建三个扁平的 Vec，分别用 std::iter::repeat_n(pad_id, pad)、repeat_n(IGNORE_INDEX, pad) 延长每个样本，掩码则先 repeat_n(1u32, len) 再 repeat_n(0, pad)，最后把每个 Vec 变成 Tensor::from_vec(v, (examples.len(), len), device)?。",
        ],
    },
    Task {
        name: "t06_train",
        number: "2.2",
        title: "Training: schedule, clipping, the causal LM loss, the loop over a Trainee, checkpoints",
        hints: &[
            "Start with lr_at and clip_grad_norm, then causal_lm_loss and evaluate_loss; write train last, following the rules of \"The training loop\" in the t06 chapter one by one.",
            "In causal_lm_loss the hidden state at position t predicts the label at t + 1: pair hidden states 0..t-1 with labels 1..t and keep only labels that are not IGNORE_INDEX. In train, validate once before the first step (step 0 is the first best), set the rate to lr_at(step), divide each micro-batch loss by grad_accum before backward, sum the gradients per Var, clip, step, and let the DivergenceGuard check every step and every validation.",
            "causal_lm_loss: hidden = model.forward_hidden(&batch.input_ids, None, train)?, labels = batch.labels.narrow(1, 1, t - 1)?, pick the supervised rows of hidden.reshape((b * t, d))? with index_select and return (model.head_loss(&rows, &targets)?, rows.len()); evaluate_loss runs over examples.chunks(batch_size) inside with_frozen_adapters. train: read_checkpoint_state and trainee.load(model, &checkpoint_dir(..)) before AdamW::with_groups(trainee.groups(model)?, params) (then opt.load_state(&optimizer_state_path(..)) when resuming); micro-step m = step * grad_accum + k uses epoch_batches(n, batch_size, seed, m / per_epoch)[m % per_epoch]; put the summed gradients into the last GradStore (grads.insert), clip_grad_norm, opt.step, guard.after_step(step + 1, loss, grad_norm, history.best)?, and at eval steps evaluate_loss, trainee.save to best_adapter_dir when best, guard.after_eval(step + 1, val_loss, history.best)? and save_checkpoint. A fresh run (start == 0) first pushes EvalRecord { step: 0, val_loss }, sets history.best = Some((0, val_loss)) and saves the trainee to best_adapter_dir; the guard is DivergenceGuard::from_history(peak_lr, &history), and save_checkpoint is skipped while guard.suspect().",
        ],
        title_zh: "训练：学习率调度、梯度裁剪、因果语言模型的损失、基于 Trainee 的训练循环、检查点",
        hints_zh: &[
            "先写 lr_at 和 clip_grad_norm，再写 causal_lm_loss 和 evaluate_loss；最后写 train，逐条遵循 t06 章「训练循环」一节中的规则。",
            "在 causal_lm_loss 中，位置 t 的隐藏状态预测位置 t + 1 的标签：把隐藏状态 0..t-1 与标签 1..t 配对，只保留不等于 IGNORE_INDEX 的标签。在 train 中，第一步之前先验证一次（第 0 步是第一个最佳），把学习率设为 lr_at(step)，每个微批次的损失在 backward 之前先除以 grad_accum，按 Var 累加梯度，裁剪，执行 step，并让 DivergenceGuard 检查每一步和每次验证。",
            "causal_lm_loss：hidden = model.forward_hidden(&batch.input_ids, None, train)?，labels = batch.labels.narrow(1, 1, t - 1)?，用 index_select 从 hidden.reshape((b * t, d))? 中选出有监督的行，返回 (model.head_loss(&rows, &targets)?, rows.len())；evaluate_loss 在 with_frozen_adapters 内对 examples.chunks(batch_size) 逐块计算。train：先 read_checkpoint_state 并 trainee.load(model, &checkpoint_dir(..))，再 AdamW::with_groups(trainee.groups(model)?, params)（恢复训练时接着 opt.load_state(&optimizer_state_path(..))）；微步 m = step * grad_accum + k 使用 epoch_batches(n, batch_size, seed, m / per_epoch)[m % per_epoch]；把累加的梯度放进最后一个 GradStore（grads.insert），然后 clip_grad_norm、opt.step、guard.after_step(step + 1, loss, grad_norm, history.best)?，并在评估步执行 evaluate_loss、是最佳时用 trainee.save 保存到 best_adapter_dir、guard.after_eval(step + 1, val_loss, history.best)?，以及 save_checkpoint。全新的训练（start == 0）先 push EvalRecord { step: 0, val_loss }，设 history.best = Some((0, val_loss))，并用 trainee 把它保存到 best_adapter_dir；guard 用 DivergenceGuard::from_history(peak_lr, &history) 创建，guard.suspect() 为真时跳过 save_checkpoint。",
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
        title_zh: "evaluate_generation、困惑度与语料级 BLEU",
        hints_zh: &[
            "perplexity 在任务 2.2 的基础上只需一行；写 corpus_bleu 前请重读 t07 章的「BLEU」一节，先在整个语料上计数，再做任何除法。",
            "对 1..=4 中的每个 n，把所有假设 n-gram 的 min(count, 该 n-gram 在任意一条参考文本中的最大计数) 之和加到 matches[n]，把假设 n-gram 的个数加到 totals[n]；BLEU = 100 * BP * exp(ln(matches / totals) 对 n 的均值)，其中 BP = exp(1 - r / c)，c > r 时除外。",
            "perplexity 就是 Ok(evaluate_loss(model, examples, batch_size, pad_id)?.exp())。在 corpus_bleu 中使用 bleu_tokens 和 ngrams(&tokens, n)（n-gram -> 计数），用一个 HashMap 保存各参考文本中的最大计数，按 (len.abs_diff(h.len()), len) 取最小值来累加最接近的参考长度，只要某个 matches[n] 为 0 就返回 0.0。evaluate_generation：generate(model, &encode(tok, prompt)?, opts)?.ids，decode(tok, &ids)?，clean(..)，对每个 Generated 做 serde_json::to_string 再加上 \"\\n\"，最后 write_atomic(out, jsonl.as_bytes())。",
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
        title_zh: "合并与验证：merge_lora_weights、unmerge_lora_weights 与 verify_merge",
        hints_zh: &[
            "重读 t08 章的「适配器所代表的更新」和「合并」两节：先把一切都算好并检查，最后才改动槽位。",
            "更新是在 f32 下计算的 scaling * B A，形状为 [out, in]；合并就是 W + update，转回 W 的数据类型并检查是否为有限值，之后每个带适配器的槽位变成一个普通的冻结 Linear；拆分时减去同样的更新，再把 W 重新包进一个 LinearWithLora。",
            "lora_delta 是 (b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)? * lora.scaling())?。merge_lora_weights 遍历 model.linears()，从 slot.base_weight()? 收集 (name, new_w)，用 new_w.to_dtype(DType::F64)?.abs()?.sum_all()? 检查是否为有限值，然后在 model.linears_mut() 中保留 slot.adapter() 的克隆，并令 *slot = LinearSlot::Linear(Linear::frozen(&w, slot.base_bias())?)。verify_merge 在 f64 下比较合并前后的 model.forward(ids, None, false)?（取绝对差的 max_all），检查未通过时调用 unmerge_lora_weights。",
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
        title_zh: "QLoRA：NF4 码本、分块量化与双重量化",
        hints_zh: &[
            "先写 nf4_code_book（normal_quantile 已经给出），再写 nearest_level；quantize 按每块 NF4_BLOCK 个值逐块处理。重读「码本」和「量化一个张量」两节。",
            "offset = 1 - (1/30 + 1/32) / 2，top = normal_quantile(offset)；正的量化级是 normal_quantile(p) / top，其中 p = offset + (0.5 - offset) * i / 8，i = 0..8；负的量化级是 -normal_quantile(p) / top，其中 p = offset + (0.5 - offset) * i / 7，i = 0..7；再加上 0，然后排序。nearest_level 返回第一个满足 v <= (level[i] + level[i + 1]) / 2 的 i，都不满足则返回 15。",
            "quantize：values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?；对每个 chunks(NF4_BLOCK)，absmax = max |v|，每个下标为 nearest_level(&book, v / absmax)（absmax 为 0 时取 0 的下标）；个数为奇数时补齐，再按 (p[0] << 4) | p[1] 打包；absmax_mean = 所有 absmax 的均值，对每个 chunks(ABSMAX_BLOCK)，scale = max |a - mean|，编码为 (127 * (a - mean) / scale).round().clamp(-127.0, 127.0) as i8。block_absmax 为 absmax_q[b] / 127 * absmax_scale[b / ABSMAX_BLOCK] + absmax_mean；dequantize 对偶数 i 读 byte >> 4，对奇数 i 读 byte & 0x0f；storage_bytes 为 codes.len() + absmax_q.len() + 4 * absmax_scale.len() + 4。",
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
        title_zh: "一个基座上的多个适配器：切换、组合、一个批次里的多个适配器",
        hints_zh: &[
            "per_row_lora 和 combine 是纯粹的张量函数：先写它们，再写 set_active、delete 和 add_weighted。重读「一个批次里的多个适配器」和「组合适配器」。",
            "per_row_lora 按 rows 中每行的索引取出该行的 A [batch, r, in]、B [batch, out, r] 和 scale [batch, 1, 1]，然后做两次批量矩阵乘法；set_active 先构建好所有新槽位（适配器的模块用 with_adapter，其余模块用 without_adapter），再安装其中任何一个。",
            "per_row_lora：a.index_select(rows, 0)?、b.index_select(rows, 0)?、scale.index_select(rows, 0)?.reshape(((), 1, 1))?，然后 x.matmul(&a_rows.transpose(1, 2)?)?.matmul(&b_rows.transpose(1, 2)?)?.broadcast_mul(&s_rows)?。combine：Linear 对 a_i * c 和 b_i * c 分别求和，其中 c = (w * l.scaling()).sqrt()；Cat 是把各 a_i * (w * scaling) 沿第 0 维、各 b_i 沿第 1 维做 Tensor::cat。add_weighted 存入 LoraLayer::from_tensors(&a, &b, &LoraConfig::new(rank, rank as f64, &[module]))，其中 rank = a.dim(0)?。",
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
        title_zh: "LoRA 与全量微调混合：modules_to_save、学习率分组、PEFT 格式",
        hints_zh: &[
            "先写 find_modules_to_save（重读「选择模块」），再写 unfreeze_modules_to_save 和 mixed_groups；save_mixed 和 load_mixed 复用 t04 的函数。",
            "当一个模型参数所属的模块（名字去掉最后一段）以某个条目结尾时，该条目选中这个参数；当一个普通线性槽位的名字以它结尾时，选中该槽位（带适配器的槽位则是错误）。参数组为：lora_A 倍数为 1，lora_B 倍数为 loraplus_ratio，modules_to_save 倍数为 full_scale，空组丢弃。",
            "对 model.params()，用 name.rsplit_once('.') 取出模块名，再测试 ends_with(entry)；对槽位，匹配 LinearSlot::Linear(l)，并对 l.named_params() 中的每一项 push \"<name>.<param>\"。解冻：在 params_mut 中用 Param::unfreeze，在 linears_mut 中对 l.weight / l.bias 同样处理，返回克隆的 p.var()。save_mixed 在调用 write_adapter 之前，把 PEFT_KEY_PREFIX + name 插入 lora_tensors 的 map，并设置 adapter_config(..).modules_to_save；load_mixed 用 file.tensor(&key, dims, dtype, device) 检查每个模块键（出了问题就变成 AdapterMismatch），然后调用 load_lora_tensors(model, &lora, &file, &module_keys)，最后用 Param::frozen(t) 设置每个值。",
        ],
    },
];
