"""Loading shipped configs and shrinking them to test size."""

import json
import os

from jdiff.config_loading import load_config_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name="tracerl"):
  return load_config_module(os.path.join(ROOT, "configs", f"{name}.py")).get_config()


def tiny(config, steps=2):
  """A few seconds of work per step: small data, 2 prompts x 4 samples, 8-token rollouts."""
  c = config
  c.tensorboard = False
  c.task.num_train, c.task.num_eval = 64, 8
  c.eval.batch_size = 8
  c.sft.steps, c.sft.batch_size = 3, 8
  c.rl.steps, c.rl.prompts_per_step, c.rl.group_size = steps, 2, 4
  c.rl.inner_epochs, c.rl.eval_every = 1, 0
  if c.sampler.get("name") in ("llada", "dream"):  # the block sampler keeps its 24 tokens
    c.sampler.gen_length = c.eval.sampler.gen_length = 8
  c.checkpoint.every = 1
  return c


def policy_leaves(workdir, step):
  """The policy TrainState's leaves (numpy) of RL checkpoint ``step`` in ``workdir``."""
  import jax
  import numpy as np

  from jdiff.train.checkpointing import Checkpointer

  items, _ = Checkpointer(workdir, read_only=True).restore(step)
  return [np.asarray(x) for x in jax.tree.leaves(items["policy"])]


def metrics_rows(workdir):
  """The rows of a run's ``metrics.jsonl`` (one dict per logged step)."""
  with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]
