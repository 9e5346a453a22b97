"""d1's diffu-GRPO on the embedded default: a small LLaDA-style model (bidirectional) built
from scratch with the character tokenizer, warm-started by LLaDA's masked SFT (1/t ELBO),
then diffu-GRPO with LLaDA semi-AR rollouts (docs/methods.md §diffu-GRPO (d1)).

  python scripts/train.py --config configs/diffu_grpo.py
"""

import ml_collections

from jdiff.config_loading import load_sibling

tracerl = load_sibling(__file__, "tracerl")


def get_config():
  c = tracerl.get_config()
  c.model.preset = "mini_llada"
  c.sft.objective = "sft_llada"
  c.sft.pad_in_loss = True  # LLaDA learns to emit EOS runs from its padding
  # The Llama-style model has no qk-norm: at the SDAR default's lr 3e-3 it learns the answer
  # format but never attends to the prompt's digits (held-out accuracy 0.0-0.016 after 200 or
  # 600 steps); 1e-3 for 300 steps gives about 0.55.
  c.sft.steps = 300
  c.sft.optim.lr = 1e-3
  # d1 rollouts: L = 24 here (256 in the paper), blocks of 8 (32), 2 tokens per step.
  c.sampler = ml_collections.ConfigDict(
      dict(name="llada", gen_length=24, block_length=8, steps=12, temperature=0.9)
  )
  c.eval.sampler = dict(name="llada", gen_length=24, block_length=8, steps=12, temperature=0.0)
  c.method = ml_collections.ConfigDict(
      dict(name="diffu_grpo", p_mask_prompt=0.15, num_iterations=4, eps=0.5, beta=0.04)
  )
  c.rl.std_normalize = False  # d1: advantage = r - group mean
  return c
