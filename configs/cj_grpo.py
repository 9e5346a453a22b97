"""CJ-GRPO with EOSER + ASS decoding on the embedded default (LLaDA-style model):
every adjacent transition of the rollout is trained; ASS gives log2(L) steps
(docs/methods.md §CJ-GRPO, EOSER and ASS).

  python scripts/train.py --config configs/cj_grpo.py
"""

import ml_collections

from jdiff.config_loading import load_sibling

diffu_grpo = load_sibling(__file__, "diffu_grpo")


def get_config():
  c = diffu_grpo.get_config()
  # ASS needs steps = log2(L): L = 32 -> 5 steps, one block; EOSER with the ASS-coupled gamma.
  c.sampler = ml_collections.ConfigDict(
      dict(
          name="llada",
          gen_length=32,
          block_length=32,
          steps=5,
          temperature=1.0,
          schedule="ass",
          eoser=True,
          record_states=True,
      )
  )
  c.eval.sampler = dict(
      name="llada",
      gen_length=32,
      block_length=32,
      steps=5,
      temperature=0.0,
      schedule="ass",
      eoser=True,
  )
  c.method = ml_collections.ConfigDict(
      dict(name="cj_grpo", eps=0.5, beta=0.04, num_iterations=2, step_batching="rows")
  )
  return c
