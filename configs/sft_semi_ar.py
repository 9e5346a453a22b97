"""Semi-autoregressive SFT for full-attention models (TraceRL's Dream SFT: the response is cut
into blocks, one row per block with earlier blocks clean, later blocks masked and the current
block masked with p ~ U(0.1, 0.9); Dream's logit shift) on the embedded default: the
``mini_dream`` preset with the character tokenizer's vocabulary and special ids and synthetic
arithmetic — no downloads.

  python scripts/sft.py --config configs/sft_semi_ar.py [--config.sft.steps=300] [--workdir DIR]
  python scripts/eval.py --config configs/sft_semi_ar.py --model DIR/model
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tensorboard = True

  c.model = ml_collections.ConfigDict(dict(
      checkpoint="", tokenizer="", family="", preset="mini_dream", param_dtype="float32",
      dtype="float32", remat="none"))

  c.task = ml_collections.ConfigDict(dict(
      name="arithmetic", num_train=2000, num_eval=128, seed=0, reward="",
      generator_kwargs=dict(digits=(1, 2), ops="+-"), train_path="", eval_path="",
      field_map={}))
  c.data = ml_collections.ConfigDict(dict(max_prompt_len=32, use_chat_template=True))

  # Rows are [prompt left-padded to 32 | response]: 32 response slots = 4 blocks of 8.
  c.sft = ml_collections.ConfigDict(dict(
      steps=300, batch_size=16, max_len=64, objective="sft_semi_ar", pad_in_loss=False,
      grad_accum=1, options=dict(block_size=8, num_blocks=4),
      optim=dict(lr=3e-3, schedule="constant_with_warmup", warmup_steps=20, max_grad_norm=1.0,
                 weight_decay=0.0)))

  # scripts/eval.py: Dream's block sampler, greedy, confidence-ordered (both modes).
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=64, threshold=0.9,
      sampler=dict(name="dream", gen_length=24, steps=24, block_length=8, alg="maskgit_plus",
                   temperature=0.0)))
  return c
