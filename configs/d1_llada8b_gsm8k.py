"""d1's diffu-GRPO on GSM8K with LLaDA-8B-Instruct (docs/methods.md §diffu-GRPO (d1)).
A real-model config: it needs a local checkpoint and data and refuses to fall back to the
embedded toy model. The d1 pipeline is two stages:

  1. masked SFT on s1K:  python scripts/sft.py --config configs/d1_sft_llada8b_s1k.py \
         --config.model.checkpoint=/ckpt/LLaDA-8B-Instruct --config.task.train_path=/data/s1k.jsonl
  2. diffu-GRPO:         python scripts/train.py --config configs/d1_llada8b_gsm8k.py \
         --config.model.checkpoint=runs/d1_sft_llada8b_s1k/model \
         --config.task.train_path=/data/gsm8k_train.jsonl --config.task.eval_path=/data/gsm8k_test.jsonl
     (start from /ckpt/LLaDA-8B-Instruct itself for d1's "base" runs).

Data: local jsonl / json / parquet / csv (openai/gsm8k main, converted beforehand), one
problem per row with
  - ``prompt``: d1's XML format instruction ("Respond in the following format: <reasoning>
    ... </reasoning> <answer> ... </answer>") followed by a blank line and the question; the
    chat template is applied here;
  - ``answer``: the gold answer, either the number alone or the raw GSM8K solution ending in
    "#### 72" (the reward extracts it).
Rename columns with ``--config.task.field_map='{"prompt": "question"}'``.

Not reproduced (the loop's limits, not choices of this config):
  - LoRA / 4-bit QLoRA (d1: NF4 base + LoRA r 128, α 64 on q,k,v,up_proj): not supported;
    this trains all weights in bfloat16 (FSDP mesh). The frozen reference is a full copy of
    the starting weights (d1: the base with the adapter disabled, the same function).
  - Prompts longer than max_prompt_len are dropped, not left-truncated as in d1.
  - d1 evaluates with "<reasoning>" prefilled after the chat template and a \\boxed{} answer
    instruction; the in-loop eval here uses the training prompt and the 2.0 correctness term.
"""

import ml_collections

from jdiff.config_loading import load_sibling

tracerl = load_sibling(__file__, "tracerl")


def get_config():
  c = tracerl.get_config()
  c.model = ml_collections.ConfigDict(
      dict(
          checkpoint="",
          tokenizer="",
          family="llada",
          preset="llada_8b",
          param_dtype="bfloat16",
          dtype="bfloat16",
          remat="full",
          require_checkpoint=True,
      )
  )
  # d1's RL trains a QLoRA adapter, not the whole model: NF4 4-bit base, r 128, alpha 64,
  # dropout 0.05 (d1 code defaults, docs/methods.md). Its target list names q,k,v,o,up,down,
  # gate_proj, but only q_proj/k_proj/v_proj/up_proj exist in LLaDA, so only those get
  # adapters: wq, wk, wv, w_up here. Adapter dropout is not implemented (0.0, not 0.05). The
  # reference policy is the adapter disabled (jdiff.models.lora.lora_reference).
  c.model.lora = ml_collections.ConfigDict(
      dict(
          rank=128, alpha=64.0, dropout=0.0, targets=("wq", "wk", "wv", "w_up"), quantize_base="nf4"
      )
  )
  # Rollout reward: the sum of d1's five GSM8K rewards (max 4.0); accuracy = correctness (2.0).
  c.task = ml_collections.ConfigDict(
      dict(
          name="gsm8k",
          reward="gsm8k",
          num_train=0,
          num_eval=0,
          seed=0,
          generator_kwargs={},
          train_path="data/gsm8k_train.jsonl",
          eval_path="data/gsm8k_test.jsonl",
          field_map={},
          # d1 scores the whole completion decoded with special tokens skipped (not cut at the
          # first EOS); no length penalty (docs/methods.md §Rewards and advantages).
          length_penalty=False,
          reward_text="whole",
      )
  )
  c.data = ml_collections.ConfigDict(dict(max_prompt_len=200, use_chat_template=True))
  # The SFT stage is its own run (configs/d1_sft_llada8b_s1k.py); none inside RL.
  c.sft = ml_collections.ConfigDict(
      dict(
          steps=0,
          batch_size=1,
          max_len=4096,
          objective="sft_llada",
          pad_in_loss=True,
          grad_accum=1,
          options=dict(eps=1e-3),
          optim=dict(lr=1e-5),
      )
  )
  # Rollouts (§2.2): L 256, block 32, 128 steps (2 tokens / step), τ 0.9, low-confidence
  # remasking, no CFG.
  c.sampler = ml_collections.ConfigDict(
      dict(
          name="llada",
          gen_length=256,
          block_length=32,
          steps=128,
          temperature=0.9,
          remasking="low_confidence",
          cfg_scale=0.0,
      )
  )
  # Eval (§2.4): greedy, L 256, block 32, T = L/2, low-confidence; batch 8.
  c.eval = ml_collections.ConfigDict(
      dict(
          batch_size=8,
          sampler=dict(
              name="llada",
              gen_length=256,
              block_length=32,
              steps=128,
              temperature=0.0,
              remasking="low_confidence",
          ),
      )
  )
  # diffu-GRPO (§2.2, train.yaml): p_mask 0.15, μ = 12 (GSM8K), ε 0.5, β 0.04, advantage
  # r − group mean (no std: config.rl.std_normalize below).
  c.method = ml_collections.ConfigDict(
      dict(
          name="diffu_grpo",
          p_mask_prompt=0.15,
          num_iterations=12,
          eps=0.5,
          beta=0.04,
          random_masking=True,
      )
  )
  # 16 prompts x G = 6 per step (8 GPUs x 6 per device x GA 2); μ = 12 updates per rollout
  # batch. GSM8K was stopped at 7,700 gradient updates -> 7700 / 12 ≈ 642 RL steps. d1 evals
  # and saves every 100 updates ≈ every 8 RL steps.
  c.rl = ml_collections.ConfigDict(
      dict(
          steps=642,
          prompts_per_step=16,
          group_size=6,
          inner_epochs=1,
          grad_accum=2,
          std_normalize=False,
          filter_groups=False,
          filter_low=0.2,
          filter_high=0.8,
          reset_optimizer=False,
          eval_every=8,
          rollout_batch=0,
      )
  )  # 96 rows of P + G = 456 tokens: one sampler call fits (scripts/aot.py)
  c.value.enabled = False
  # AdamW β (0.9, 0.99), wd 0.1, lr 3e-6 constant_with_warmup (warmup_ratio 1e-4 of 7,700
  # updates rounds to 1 step), max_grad_norm 0.2 (§2.2).
  c.optim = ml_collections.ConfigDict(
      dict(
          lr=3e-6,
          schedule="constant_with_warmup",
          warmup_steps=1,
          b1=0.9,
          b2=0.99,
          weight_decay=0.1,
          max_grad_norm=0.2,
      )
  )
  c.checkpoint = ml_collections.ConfigDict(dict(every=8, max_to_keep=3))
  # FSDP over every device; rollouts sample from the training shards ("fsdp") rather than a
  # full bf16 copy per device (8-16 GB), a memory choice for 4B/8B models.
  c.mesh = ml_collections.ConfigDict(dict(shape=(1, -1, 1), sampling_layout="fsdp"))
  return c
