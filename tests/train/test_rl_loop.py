"""The RL pipeline end to end on the embedded default, shortened: outputs, resume, bad input."""

import json
import os
import warnings

import numpy as np
import pytest

from jdiff.train import rl_loop
from jdiff.train.checkpointing import Checkpointer

from config_utils import load_config, metrics_rows, policy_leaves, tiny


def test_outputs(straight):
  workdir, results = straight
  rows = metrics_rows(workdir)
  assert [r["step"] for r in rows] == [1, 2]
  for key in (
      "reward_mean",
      "loss",
      "rollout_s",
      "train_s",
      "accuracy",
      "kl",
      "clip_frac",
      "response_length",
      "tokens_per_s",
  ):
    assert key in rows[0], key
  assert {"accuracy_before", "accuracy_after"} <= set(results)
  assert Checkpointer(workdir, read_only=True).steps() == [1, 2]
  assert json.load(open(os.path.join(workdir, "results.json"))) == results


def test_final_policy_is_written_as_a_jdiff_checkpoint(straight):
  """DIR/model holds the last step's policy, loadable by from_pretrained (sample.py, eval.py
  and convert_hf.py export read it), with the run's tokenizer."""
  import jax
  from flax import nnx

  import jdiff

  workdir, results = straight
  assert results["model_dir"] == os.path.join(workdir, "model")
  model = jdiff.from_pretrained(results["model_dir"])
  jdiff.load_tokenizer(results["model_dir"])
  items, _ = Checkpointer(workdir, read_only=True).restore(2)
  trained = {np.asarray(x).tobytes() for x in jax.tree.leaves(items["policy"]["params"])}
  saved = {np.asarray(x).tobytes() for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
  assert saved == trained


def test_resume_equals_straight_run(straight, tmp_path):
  workdir, _ = straight
  resumed = str(tmp_path / "resumed")
  rl_loop.run(tiny(load_config(), steps=1), resumed)
  rl_loop.run(tiny(load_config(), steps=2), resumed)  # picks up at step 1
  for a, b in zip(policy_leaves(workdir, 2), policy_leaves(resumed, 2)):
    np.testing.assert_array_equal(a, b)
  rows = metrics_rows(resumed)
  assert [r["step"] for r in rows] == [1, 2]


def test_unknown_method_key_is_named(tmp_path):
  c = tiny(load_config())
  with c.unlocked():
    c.method.shrinkk = 2
  with pytest.raises(ValueError, match=r"config.method.*shrinkk"):
    rl_loop.run(c, str(tmp_path))


def test_missing_checkpoint_dir_is_named(tmp_path):
  c = tiny(load_config())
  c.model.checkpoint = str(tmp_path / "no_such_model")
  with pytest.raises(FileNotFoundError, match="no_such_model"):
    rl_loop.run(c, str(tmp_path / "w"))


def test_dataset_without_mapped_field(tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_text(
      "\n".join(json.dumps({"question": f"Compute {i}+1", "gold": str(i + 1)}) for i in range(4))
  )
  c = tiny(load_config())
  c.task.train_path = str(data)
  c.task.field_map = {"prompt": "question", "answer": "solution"}
  with pytest.raises(ValueError, match="solution"):
    rl_loop.run(c, str(tmp_path / "w"))


def test_long_prompts_are_dropped_and_counted(tmp_path):
  c = tiny(load_config(), steps=1)
  c.task.name, c.task.generator_kwargs = "arithmetic", dict(digits=(1, 2), ops="+")
  # The chat template adds 19 tokens: "Compute 3+6" fits in 30, "Compute 12+6" does not.
  c.data.max_prompt_len = 30
  results = rl_loop.run(c, str(tmp_path))
  assert results["dropped_prompts"] > 0


def test_all_groups_filtered_warns_not_crashes(tmp_path):
  c = tiny(load_config(), steps=1)
  c.rl.filter_groups = True
  c.rl.filter_low, c.rl.filter_high = 2.0, 3.0  # no group accuracy can be in range
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    rl_loop.run(c, str(tmp_path))
  assert any("filter" in str(w.message).lower() for w in caught)


def test_rl_step_alone_matches_the_run(straight, tmp_path):
  """rl_step driven by hand (open_run, warm start, build) gives the straight run's rows."""
  from jdiff.train.run_setup import open_run, warm_start

  workdir, _ = straight
  c = tiny(load_config())
  r = open_run(c, str(tmp_path), lambda msg: None)
  ctx, rt = rl_loop.build(c, r, warm_start(r, c, lambda msg: None))
  expected = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  for step in range(2):
    rt, row = rl_loop.rl_step(ctx, rt, step)
    assert set(row) == set(expected[step]) - {"step"}
    for k, v in expected[step].items():
      if k != "step" and not k.endswith("_s") and k != "tokens_per_s":
        assert row[k] == v, (step, k)
  r.writer.close()
