"""Trace SFT (TraceRL's Table 1) for a full-attention (LLaDA-style) model on the embedded
default: warm-start with LLaDA masked SFT, sample every training prompt, keep the correct
trajectories and fine-tune on them step by step (jdiff/sft/trace_sft.py; one row per decoding
step, shrink 1).

  python scripts/sft.py --config configs/trace_sft_llada.py [--workdir DIR]
  python scripts/eval.py --config configs/trace_sft_llada.py --model DIR/model

The equal-step control is configs/sft_llada.py with sft.steps = warm_start_steps + sft.steps.
"""

import ml_collections

from jdiff.config_loading import load_sibling

sft_llada = load_sibling(__file__, "sft_llada")


def get_config():
  c = sft_llada.get_config()
  warm = c.sft.steps
  c.sft.objective, c.sft.options, c.sft.steps = "trace_sft", {}, 100
  c.sft.trace = ml_collections.ConfigDict(
      dict(
          warm_start_steps=warm,
          warm_start_objective="sft_llada",
          warm_start_options=dict(eps=1e-3),
          samples_per_prompt=2,
          min_reward=None,
          num_prompts=512,
          rollout_batch=64,
          shrink=1,
          max_steps=12,
      )
  )
  # Semi-AR low-confidence decoding, temperature 1 (3 blocks of 8, 2 tokens per step).
  c.sampler = ml_collections.ConfigDict(
      dict(
          name="llada",
          gen_length=24,
          block_length=8,
          steps=12,
          temperature=1.0,
          remasking="low_confidence",
      )
  )
  return c
