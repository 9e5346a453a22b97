"""Trace SFT (TraceRL's Table 1) for a block model on the embedded default: warm-start with
block SFT, sample every training prompt with the rollout sampler, keep the correct trajectories
and fine-tune on them step by step (jdiff/sft/trace_sft.py).

  python scripts/sft.py --config configs/trace_sft_block.py [--workdir DIR]
  python scripts/eval.py --config configs/trace_sft_block.py --model DIR/model

The equal-step control is configs/sft_block.py with sft.steps = warm_start_steps + sft.steps.
A rerun in the same workdir reuses DIR/trace_sft_trajectories.jsonl.
"""

import ml_collections

from jdiff.config_loading import load_sibling

sft_block = load_sibling(__file__, "sft_block")
tracerl = load_sibling(__file__, "tracerl")


def get_config():
  c = sft_block.get_config()
  warm = c.sft.steps
  c.sft.objective, c.sft.options, c.sft.steps = "trace_sft", {}, 100
  c.sft.trace = ml_collections.ConfigDict(
      dict(
          warm_start_steps=warm,
          warm_start_objective="sft_block",
          warm_start_options=dict(t_per="block", weighting="inverse_t"),
          samples_per_prompt=2,
          min_reward=None,
          num_prompts=512,
          rollout_batch=64,
          shrink=1,
          max_steps=None,
      )
  )
  # Trajectories come from the RL rollout sampler (dynamic threshold decoding, temperature 1).
  c.sampler = tracerl.get_config().sampler
  return c
