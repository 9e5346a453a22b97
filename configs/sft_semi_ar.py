"""Semi-autoregressive SFT for full-attention models (TraceRL's Dream SFT: the response is cut
into blocks, one row per block with earlier blocks clean, later blocks masked and the current
block masked with p ~ U(0.1, 0.9); Dream's logit shift) on the embedded default: the
``mini_dream`` preset with the character tokenizer and the sort task of configs/sft_block.py
— no downloads.

  python scripts/sft.py --config configs/sft_semi_ar.py [--config.sft.steps=400] [--workdir DIR]
  python scripts/eval.py --config configs/sft_semi_ar.py --model DIR/model
"""

import ml_collections

from jdiff.config_loading import load_sibling

sft_block = load_sibling(__file__, "sft_block")


def get_config():
  c = sft_block.get_config()
  c.model.preset = "mini_dream"
  # Rows are [prompt (28) | response (24)]: 24 response slots = 3 blocks of 8.
  c.sft.objective, c.sft.pad_in_loss = "sft_semi_ar", False
  c.sft.options = dict(block_size=8, num_blocks=3)
  c.sft.optim.lr = 1e-3  # no qk-norm in the Qwen2-style model (see configs/sft_llada.py)
  # Dream's block sampler, greedy, confidence-ordered (both eval modes).
  c.eval.sampler = ml_collections.ConfigDict(
      dict(
          name="dream", gen_length=24, steps=24, block_length=8, alg="maskgit_plus", temperature=0.0
      )
  )
  return c
