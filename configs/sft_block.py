"""Block-diffusion SFT (SDAR/TraDo: x_t ⊕ x_0, per-block t, 1/t weight) on the embedded
default: the ``mini_sdar`` preset with the character tokenizer and synthetic arithmetic —
no downloads.

  python scripts/sft.py --config configs/sft_block.py [--config.sft.steps=200] [--workdir DIR]
  python scripts/eval.py --config configs/sft_block.py --model DIR/model

For a real checkpoint set ``--config.model.checkpoint=/path/to/sdar`` (its tokenizer is used),
and a dataset with ``--config.task.train_path=data.jsonl`` (targets from its ``response``
field; ``task.field_map`` renames columns).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tensorboard = True

  c.model = ml_collections.ConfigDict(dict(
      checkpoint="",  # a local HF / jdiff checkpoint dir; empty = build `preset` from scratch
      tokenizer="", family="", preset="mini_sdar", param_dtype="float32", dtype="float32",
      remat="none"))

  c.task = ml_collections.ConfigDict(dict(
      name="arithmetic", num_train=2000, num_eval=128, seed=0, reward="",
      generator_kwargs=dict(digits=(1, 2), ops="+-"), train_path="", eval_path="",
      field_map={}))
  c.data = ml_collections.ConfigDict(dict(max_prompt_len=32, use_chat_template=True))

  # t per block (SDAR), masks drawn with probability t, loss weighted by 1/t.
  c.sft = ml_collections.ConfigDict(dict(
      steps=200, batch_size=32, max_len=64, objective="sft_block", pad_in_loss=False,
      grad_accum=1, options=dict(t_per="block", weighting="inverse_t"),
      optim=dict(lr=3e-3, schedule="constant_with_warmup", warmup_steps=20, max_grad_norm=1.0,
                 weight_decay=0.0)))

  # scripts/eval.py: static = this sampler, dynamic = low_confidence_dynamic at `threshold`.
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=64, threshold=0.9,
      sampler=dict(name="block", max_tokens=16, denoising_steps=4,
                   strategy="low_confidence_static", temperature=0.0)))
  return c
