"""Each shipped online-RL config runs a shortened loop end to end (1 RL step)."""

import math

import pytest

from jdiff.train import rl_loop

from config_utils import load_config, metrics_rows, tiny


@pytest.mark.parametrize("name", ["tracerl_value", "diffu_grpo", "cj_grpo"])
def test_config_runs_one_step(name, tmp_path):
  c = tiny(load_config(name), steps=1)
  c.sft.steps = 2
  if c.sampler.get("name") in ("llada", "dream"):  # LLaDA-style samplers: keep rollouts short
    c.sampler.gen_length = c.eval.sampler.gen_length = 16
    if c.sampler.get("schedule") == "ass":
      c.sampler.steps = c.eval.sampler.steps = 4  # log2(16)
      c.sampler.block_length = c.eval.sampler.block_length = 16
    else:
      c.sampler.block_length = c.eval.sampler.block_length = 8
      c.sampler.steps = c.eval.sampler.steps = 8
  if "num_iterations" in c.method:
    c.method.num_iterations = 2
  else:  # the shipped inner_epochs: per-update and per-step (value) metrics must both land
    c.rl.inner_epochs = load_config(name).rl.inner_epochs
    assert c.rl.inner_epochs > 1
  rl_loop.run(c, str(tmp_path))
  row = metrics_rows(tmp_path)[0]
  assert math.isfinite(row["loss"]) and row["skipped"] == 0
  if name == "tracerl_value":
    assert math.isfinite(row["value_loss"])
