"""Exact weighting across micro-batches: with the optimizer step's weights on the batch
(jdiff.train.minibatch.with_weights), one SGD step's parameter change does not depend on
grad_accum, and equals the change of today's full-batch (grad_accum 1, unweighted) loss."""

import jax
import numpy as np
import optax
import pytest

import jdiff
from jdiff.rl import cj_grpo, diffu_grpo, tracerl, value
from jdiff.train import minibatch
from jdiff.train.update import init_train_state, make_update_step
from rl_toys import toy_trajectory


def _change(model, loss_fn, batch, grad_accum):
  """The parameter change of one plain SGD step (lr 1): -gradient, leaf by leaf."""
  sgd = optax.sgd(1.0)
  graphdef, state = init_train_state(model, sgd)
  start = jax.tree.map(np.asarray, state.params)
  step = make_update_step(graphdef, sgd, loss_fn, grad_accum=grad_accum, donate=False)
  new, metrics = step(state, batch)
  assert float(metrics["skipped"]) == 0.0
  change = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, new.params, start)
  # The change is read back from p0 + change: one float32 spacing of p0 is its resolution.
  ulp = jax.tree.map(lambda b: np.spacing(np.abs(b).max().astype(np.float32)), start)
  return change, ulp


def _same(a, b):
  """Changes agree to rtol 1e-5, up to the float32 resolution of the parameters they were
  added to and 1e-6 of the leaf's largest change (entries that nearly cancel)."""
  (ca, ulp), (cb, _) = a, b

  def check(x, y, u):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * np.abs(y).max() + 2 * u)

  jax.tree.map(check, ca, cb, ulp)


def _differs(a, b) -> bool:
  a, b = a[0], b[0]
  return any(
      not np.allclose(x, y, rtol=1e-3, atol=1e-3 * np.abs(y).max())
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def _rows_per_response(batch):
  idx = np.asarray(batch["response_index"])
  return int(np.sum(idx == idx[0]))


def _tracerl_batch(model, seed=0):
  traj, group = toy_trajectory(seed, n_prompts=2, group=2, g=8)
  rng = np.random.default_rng(seed)
  adv = rng.normal(size=len(traj.lengths)).astype(np.float32)
  cfg = tracerl.TraceRLConfig(beta=0.05)
  batch = tracerl.build_batch(traj, adv, None, cfg, model.config)
  logp = np.asarray(tracerl.logprob_fn(model, batch, cfg))
  # π_old away from π_θ so the clip and the KL act.
  batch["old_logp"] = logp + 0.3 * rng.normal(size=logp.shape).astype(np.float32)
  return batch, cfg


@pytest.mark.parametrize("preset", ["tiny_sdar", "tiny_llada"])
def test_tracerl_change_independent_of_grad_accum(models, preset):
  model = models(preset)
  batch, cfg = _tracerl_batch(model)
  loss = lambda m, b: tracerl.loss_fn(m, b, cfg)  # noqa: E731
  rows, per = minibatch.num_rows(batch), _rows_per_response(batch)
  reference = _change(model, loss, batch, 1)  # the loss as the whole batch defines it
  weighted = minibatch.with_weights(batch, True)
  accums = sorted({1, 2, per} | ({rows // 2} if rows % 2 == 0 else set()))
  for ga in accums:
    if rows % ga == 0:
      _same(_change(model, loss, weighted, ga), reference)
  if per > 1:  # the round-aligned stride: today's per-micro-batch mean re-weights rows
    assert _differs(_change(model, loss, batch, per), reference)


def test_value_loss_change_independent_of_grad_accum(models):
  policy = models("tiny_sdar")
  vmodel = jdiff.ValueModel.from_policy(policy)
  batch, _ = _tracerl_batch(policy, seed=1)
  rng = np.random.default_rng(2)
  shape = np.shape(batch["loss_mask"])
  batch["old_values"] = rng.normal(size=shape).astype(np.float32) * 0.1
  batch["returns"] = rng.normal(size=shape).astype(np.float32)
  vcfg = value.ValueConfig()
  loss = lambda m, b: value.value_loss_fn(  # noqa: E731
      m, b, vcfg, tracerl.attention_mask(b, m.config)
  )
  per = _rows_per_response(batch)
  # Late rounds with fewer non-empty rows (responses that finished early), as in real rollouts.
  batch["loss_mask"] = np.array(batch["loss_mask"])
  batch["loss_mask"][per - 1 :: 2 * per] = False
  reference = _change(vmodel, loss, batch, 1)
  _same(_change(vmodel, loss, minibatch.with_weights(batch, True), per), reference)
  _same(_change(vmodel, loss, minibatch.with_weights(batch, True), 2), reference)
  assert _differs(_change(vmodel, loss, batch, per), reference)


def test_d1_token_mean_change_independent_of_grad_accum(models):
  model = models("tiny_llada")
  traj, _ = toy_trajectory(3, n_prompts=2, group=4, g=8)
  cfg = diffu_grpo.DiffuGRPOConfig(num_iterations=1, beta=0.04, chunk_size=48)
  adv = np.random.default_rng(3).normal(size=len(traj.lengths)).astype(np.float32)
  batch = diffu_grpo.select_iteration(
      diffu_grpo.build_batch(traj, adv, jax.random.key(0), cfg, model.config), 0
  )
  batch["loss_mask"] = np.array(batch["loss_mask"])
  batch["loss_mask"][0, 1:] = False  # one short row: micro-batch 0 has fewer tokens
  logp = np.asarray(diffu_grpo.logprob_fn(model, batch, cfg))
  rng = np.random.default_rng(4)
  batch["old_logp"] = logp + 0.3 * rng.normal(size=logp.shape).astype(np.float32)
  batch["ref_logp"] = logp + 0.2 * rng.normal(size=logp.shape).astype(np.float32)
  loss = lambda m, b: diffu_grpo.loss_fn(m, b, cfg)  # noqa: E731
  reference = _change(model, loss, batch, 1)
  for ga in (2, 4):
    _same(_change(model, loss, minibatch.with_weights(batch, True), ga), reference)
  # The strided micro-batches (rows i, i+4) then hold unequal token counts: a per-micro-batch
  # token mean (today's unweighted loss) weights their tokens unequally.
  assert _differs(_change(model, loss, batch, 4), reference)


def test_cj_grpo_keeps_its_own_exact_weights():
  """CJ-GRPO's builder weights already include grad_accum; it is not step-weighted."""
  assert not cj_grpo.METHOD.step_weighted
  assert tracerl.METHOD.step_weighted and diffu_grpo.METHOD.step_weighted
