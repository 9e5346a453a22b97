"""LLaDA masked-diffusion SFT (d1 / LLaDA: one t per sequence, masks with probability t,
CE / t over the response and its EOS padding) on the embedded default: the ``mini_llada``
preset with the character tokenizer and the sort task of configs/sft_block.py — no downloads.

  python scripts/sft.py --config configs/sft_llada.py [--config.sft.steps=400] [--workdir DIR]
  python scripts/eval.py --config configs/sft_llada.py --model DIR/model
"""

import ml_collections

from jdiff.config_loading import load_sibling

sft_block = load_sibling(__file__, "sft_block")


def get_config():
  c = sft_block.get_config()
  c.model.preset = "mini_llada"
  # d1's layout: the EOS padding after the answer is part of the loss (LLaDA learns EOS runs).
  c.sft.objective, c.sft.pad_in_loss, c.sft.options = "sft_llada", True, dict(eps=1e-3)
  # No qk-norm in the Llama-style model: at lr 3e-3 it learns the format but not the digits.
  c.sft.optim.lr = 1e-3
  # static = this greedy sampler (3 semi-AR blocks of 8, 2 tokens per step);
  # dynamic = the same with Fast-dLLM threshold decoding at `threshold`.
  c.eval.sampler = ml_collections.ConfigDict(
      dict(
          name="llada",
          gen_length=24,
          block_length=8,
          steps=12,
          temperature=0.0,
          remasking="low_confidence",
      )
  )
  return c
