"""LLaDA masked-diffusion SFT (d1 / LLaDA: one t per sequence, masks with probability t,
CE / t over the response and its EOS padding) on the embedded default: the ``mini_llada``
preset with the character tokenizer's vocabulary and special ids (``setup.load_policy``
overrides them for any preset) and synthetic arithmetic — no downloads.

  python scripts/sft.py --config configs/sft_llada.py [--config.sft.steps=400] [--workdir DIR]
  python scripts/eval.py --config configs/sft_llada.py --model DIR/model
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tensorboard = True

  c.model = ml_collections.ConfigDict(dict(
      checkpoint="", tokenizer="", family="", preset="mini_llada", param_dtype="float32",
      dtype="float32", remat="none"))

  c.task = ml_collections.ConfigDict(dict(
      name="arithmetic", num_train=2000, num_eval=128, seed=0, reward="",
      generator_kwargs=dict(digits=(1, 2), ops="+-"), train_path="", eval_path="",
      field_map={}))
  c.data = ml_collections.ConfigDict(dict(max_prompt_len=32, use_chat_template=True))

  # d1's layout: the EOS padding after the answer is part of the loss (LLaDA learns EOS runs).
  c.sft = ml_collections.ConfigDict(dict(
      steps=400, batch_size=32, max_len=64, objective="sft_llada", pad_in_loss=True,
      grad_accum=1, options=dict(eps=1e-3),
      optim=dict(lr=3e-3, schedule="constant_with_warmup", warmup_steps=20, max_grad_norm=1.0,
                 weight_decay=0.0)))

  # scripts/eval.py: static = this greedy sampler (one token per step, 3 semi-AR blocks);
  # dynamic = the same with Fast-dLLM threshold decoding at `threshold`.
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=64, threshold=0.9,
      sampler=dict(name="llada", gen_length=24, block_length=8, steps=24, temperature=0.0,
                   remasking="low_confidence")))
  return c
