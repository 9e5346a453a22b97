"""The loop around the per-token losses: PPO minibatches in rollout order, dropped groups,
the value model's phase, the no-signal warning (jdiff.train.rl_loop, jdiff.train.minibatch)."""

import types

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import jdiff
from jdiff.rl import advantages as adv_lib
from jdiff.rl import tracerl
from jdiff.rl import value as value_lib
from jdiff.sharding import make_mesh
from jdiff.train import minibatch, rl_loop
from jdiff.train.config import RLConfig
from jdiff.train.runtime import policy_runtime, value_runtime
from rl_toys import toy_trajectory


def _ctx(model=None, vcfg=None, **rl):
  rc = RLConfig(**rl)
  run = types.SimpleNamespace(model=model)
  return rl_loop.StepContext(
      run=run,
      config=None,
      rc=rc,
      method=tracerl.METHOD,
      method_cfg=tracerl.TraceRLConfig(),
      advantage=adv_lib.group_zscore,
      vcfg=vcfg,
  )


@pytest.fixture(scope="module")
def model():
  return jdiff.DiffusionLM(jdiff.preset("tiny_sdar"), rngs=nnx.Rngs(0))


def test_minibatches_walk_rows_in_order_and_pad():
  batch = {"loss_mask": np.ones((5, 3), bool), "x": np.arange(5), "scalar": np.float32(2)}
  parts = list(minibatch.minibatches(batch, 2))
  assert [p["x"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 4]]
  assert parts[-1]["loss_mask"].tolist() == [[True] * 3, [False] * 3]  # padding trains nothing
  w = minibatch.with_weights(parts[-1], True)
  assert w["row_weight"].tolist() == [1.0, 0.0]
  np.testing.assert_allclose(w["token_weight"], [1 / 3] * 2, rtol=1e-7)
  assert minibatch.step_size(5, 0, 2, 5) == 6 and minibatch.step_size(5, 4, 2, 5) == 4


def test_ppo_minibatches_move_the_ratio(model):
  """Several optimizer steps per rollout: after the first, π_θ ≠ π_old, so the ratio, the
  clip fraction and the KL move within the step (they are exactly 1 / 0 / 0 on the first)."""
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  cfg = tracerl.TraceRLConfig(beta=0.01, post_num=1)  # every row supervises a token
  rt = policy_runtime(
      model, optax.adam(0.05), tracerl.METHOD, cfg, mesh=mesh, grad_accum=1, sample_rules=None
  )
  traj, group = toy_trajectory(0, n_prompts=2, group=2, g=8)
  adv = np.random.default_rng(0).normal(size=len(traj.lengths)).astype(np.float32)
  batch = tracerl.build_batch(traj, adv, None, cfg, model.config)
  batch["old_logp"] = rt.scores(batch)
  rows = minibatch.num_rows(batch)
  ctx = _ctx(rows_per_update=2, inner_epochs=2, group_size=group)
  _, metrics = rl_loop._policy_updates(ctx, rt, batch)
  assert len(metrics) == 2 * -(-rows // 2)
  assert metrics[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-6) and metrics[0]["kl"] == 0.0
  later = metrics[1:]
  assert all(m["kl"] > 0 for m in later)
  assert max(m["clip_frac"] for m in later) > 0


def test_filtered_groups_build_no_rows_or_value_targets(model):
  """An all-correct group (accuracy 1 > 0.8) reaches neither the policy nor the value model."""
  mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
  cfg = tracerl.TraceRLConfig()
  vcfg = value_lib.ValueConfig()
  policy = policy_runtime(
      model, optax.sgd(0.1), tracerl.METHOD, cfg, mesh=mesh, grad_accum=1, sample_rules=None
  )
  value = value_runtime(model, optax.sgd(0.1), vcfg, model.config, mesh=mesh, grad_accum=1)
  traj, group = toy_trajectory(1, n_prompts=3, group=2, g=8)
  rewards = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 1.0], np.float32)  # group 0 all correct
  ctx = _ctx(model, vcfg, group_size=group, filter_groups=True)
  rt = rl_loop.RLRuntime(policy, value)
  batch, v_rows, returns, keep = rl_loop._train_batch(ctx, rt, traj, rewards, jax.random.key(0))
  assert keep.tolist() == [False, False, True, True, True, True]
  full = tracerl.build_batch(traj, np.zeros(6, np.float32), None, cfg, model.config)
  assert minibatch.num_rows(batch) == minibatch.num_rows(full) * 4 // 6
  assert set(np.asarray(batch["response_index"]).tolist()) == {0, 1, 2, 3}  # kept only
  assert returns.shape[0] == 4 and v_rows.shape[0] == minibatch.num_rows(batch)
  # The rows are those of the kept responses, in order.
  np.testing.assert_array_equal(
      batch["input_ids"],
      full["input_ids"][np.isin(np.asarray(full["response_index"]), [2, 3, 4, 5])],
  )
  assert minibatch.drop_report(keep, group) == {"kept_groups": 2.0, "dropped_groups": 1.0}


def test_all_groups_dropped_means_no_update(model):
  ctx = _ctx(model, group_size=2, filter_groups=True)
  traj, _ = toy_trajectory(2, n_prompts=2, group=2, g=8)
  with pytest.warns(UserWarning, match="filtered out"):
    out = rl_loop._train_batch(ctx, None, traj, np.ones(4, np.float32), None)
  assert out[0] is None
  policy, metrics = rl_loop._policy_updates(ctx, "policy", None)
  assert policy == "policy" and metrics == []


def test_no_learning_signal_warns():
  ctx = _ctx(group_size=2)
  with pytest.warns(UserWarning, match="no learning signal"):
    rl_loop._advantages(ctx, np.array([1, 1, 0, 0, 0.5, 0.5], np.float32), 3)


class _Recorder:

  def __init__(self):
    self.calls = 0

  def step(self, batch):
    self.calls += 1
    assert "row_weight" in batch and "returns" in batch
    return self, {"loss": 0.5, "skipped": 0.0}


def test_train_value_every_counts_epochs_from_one():
  """The reference trains the value model when epoch % every == 0, epochs from 1: with
  every = 2 at steps 2, 4, ... (0-based 1, 3, ...), never at the first step."""
  ctx = _ctx(vcfg=value_lib.ValueConfig(train_value_every=2), group_size=2)
  batch = {"loss_mask": np.ones((4, 3), bool), "response_index": np.arange(4)}
  returns = np.zeros((4, 3), np.float32)
  rec = _Recorder()
  trained = []
  for step in range(4):
    _, m = rl_loop._value_update(ctx, rec, batch, np.zeros((4, 3), np.float32), returns, step)
    trained.append(bool(m))
  assert trained == [False, True, False, True] and rec.calls == 2
