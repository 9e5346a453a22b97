"""The offline (dTRPO) loop on the embedded default, shortened: outputs, deterministic pair
building, resume equals the straight run, pairs files (field mapping, a missing field)."""

import json
import os

import jax
import numpy as np
import pytest

from jdiff.rewards.registry import register_reward
from jdiff.train import offline_loop
from jdiff.train import pairs as pairs_lib

from config_utils import load_config, metrics_rows


def _length_reward(completions):
  # An untrained model never sorts correctly (all-equal rewards give no pairs); the completion
  # length varies from sample to sample, so every group yields a pair.
  return [float(len(c)) for c in completions]


register_reward("test_completion_length", _length_reward, overwrite=True)


def short(max_steps=0):
  c = load_config("dtrpo")
  c.tensorboard = False
  c.task.num_train, c.task.num_eval = 16, 4
  c.task.reward = "test_completion_length"
  c.eval.batch_size = 16  # = rollout_batch x group_size: one sampler compile serves both
  c.sft.steps, c.sft.batch_size = 1, 4
  c.sampler.gen_length = c.eval.sampler.gen_length = 8
  c.offline.update(
      num_prompts=4, group_size=4, rollout_batch=4, pairs_per_step=2, epochs=1, max_steps=max_steps
  )
  c.checkpoint.every = 1
  return c


def _leaves(workdir):
  return jax.tree.leaves(offline_loop.params_of(workdir))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  return workdir, offline_loop.run(short(), workdir)


def test_outputs(straight):
  workdir, results = straight
  rows = metrics_rows(workdir)
  assert [r["step"] for r in rows] == list(range(1, results["steps"] + 1))
  assert results["pairs"] == 4 and results["steps"] == 2
  for r in rows:
    assert np.isfinite(r["loss"]) and r["skipped"] == 0
    assert 0 <= r["reward_accuracy"] <= 1 and r["train_s"] > 0
    assert {"margin", "reward_mean", "rollout_s"} <= set(r)
  assert rows[0]["rollout_s"] > 0 and rows[1]["rollout_s"] == 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  assert {"accuracy_before", "accuracy_after"} <= set(results)
  pairs = pairs_lib.read_pairs(os.path.join(workdir, pairs_lib.PAIRS_FILE))
  assert len(pairs) == 4
  for p in pairs:
    assert p["chosen_reward"] > p["rejected_reward"]
    assert {"prompt", "chosen", "rejected", "prompt_ids", "chosen_ids", "rejected_ids"} <= set(p)
    # the sampler's decoding order, kept for dTRPO's newly_unmasked estimator
    for side in ("chosen", "rejected"):
      assert len(p[f"{side}_steps"]) == len(p[f"{side}_ids"]) and min(p[f"{side}_steps"]) > 0


def test_newly_unmasked_on_recorded_orders_with_k_draws(straight, tmp_path):
  """The paper's estimator on the straight run's self-sampled pairs (their step maps), two
  draws per block and t shared within a pair: the loop runs and its rows are 2 x K x pairs."""
  workdir, _ = straight
  c = short(max_steps=1)
  c.method.update(estimator="newly_unmasked", timesteps_per_block=2, share_timesteps=True)
  run_dir = str(tmp_path / "nu")
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, pairs_lib.PAIRS_FILE), "w") as f:
    f.write(open(os.path.join(workdir, pairs_lib.PAIRS_FILE)).read())
  offline_loop.run(c, run_dir)
  row = json.loads(open(os.path.join(run_dir, "metrics.jsonl")).readline())
  assert np.isfinite(row["loss"]) and row["skipped"] == 0
  assert row["num_tokens"] > 0


def test_resume_equals_straight_run_and_pairs_are_deterministic(straight, tmp_path):
  workdir, _ = straight
  resumed = str(tmp_path / "resumed")
  offline_loop.run(short(max_steps=1), resumed)  # stops after step 1 ...
  first = open(os.path.join(resumed, pairs_lib.PAIRS_FILE)).read()
  # ... a fresh run built exactly the straight run's pairs (same seed, same warm start)
  assert first == open(os.path.join(workdir, pairs_lib.PAIRS_FILE)).read()
  offline_loop.run(short(), resumed)  # picks up at step 1
  for a, b in zip(_leaves(workdir), _leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  rows = metrics_rows(resumed)
  assert [r["step"] for r in rows] == [1, 2]


def _write(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


PAIR_ROWS = [
    {
        "question": f"Sort {s}",
        "good": f"<answer>{''.join(sorted(s))}</answer>",
        "bad": f"<answer>{s}</answer>",
    }
    for s in ("3142", "9275", "4108", "6613")
]


def test_pairs_file_with_field_map(tmp_path):
  path = str(tmp_path / "pairs.jsonl")
  _write(path, PAIR_ROWS)
  c = short()
  c.sft.steps, c.task.num_eval = 0, 0  # no warm start, no eval: just the file path
  c.offline.update(
      pairs_path=path,
      pairs_per_step=4,
      field_map={"prompt": "question", "chosen": "good", "rejected": "bad"},
  )
  results = offline_loop.run(c, str(tmp_path / "run"))
  assert results["pairs"] == 4 and results["steps"] == 1
  assert np.isnan(results["pair_build_reward_mean"])
  saved = pairs_lib.read_pairs(str(tmp_path / "run" / pairs_lib.PAIRS_FILE))
  assert saved[0]["chosen"] == "<answer>1234</answer>"
  assert len(saved[0]["chosen_ids"]) == len("<answer>1234</answer>") + 1  # chars + EOS


def test_pairs_file_missing_field_is_named(tmp_path):
  path = str(tmp_path / "pairs.jsonl")
  _write(path, [{"prompt": r["question"], "chosen": r["good"]} for r in PAIR_ROWS])
  c = short()
  c.offline.pairs_path = path
  with pytest.raises(ValueError, match=r"no text field 'rejected'.*config\.offline\.field_map"):
    offline_loop.run(c, str(tmp_path / "run"))


def test_pairs_file_bad_mapping_is_named(tmp_path):
  path = str(tmp_path / "pairs.jsonl")
  _write(path, PAIR_ROWS)
  c = short()
  c.offline.pairs_path = path
  c.offline.field_map = {"prompt": "question", "chosen": "good", "rejected": "worse"}
  with pytest.raises(ValueError, match=r"field 'rejected' is mapped to column 'worse'"):
    offline_loop.run(c, str(tmp_path / "run"))


def test_online_method_is_refused(tmp_path):
  c = short()
  c.method = load_config("tracerl").method
  with pytest.raises(ValueError, match="online method"):
    offline_loop.run(c, str(tmp_path))
