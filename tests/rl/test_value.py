"""The value-model path of TraceRL: token values from rows, GAE advantages, value loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jdiff
from jdiff.rl import tracerl, value
from jdiff.sampling import block
from jdiff.sampling.block import BlockSamplerConfig


@pytest.fixture(scope="module")
def setup():
  cfg = jdiff.preset("tiny_sdar", eos_token_id=2)
  policy = jdiff.DiffusionLM(cfg, rngs=nnx.Rngs(0))
  vmodel = jdiff.ValueModel.from_policy(policy)
  traj = block.sample(
      policy,
      [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]],
      None,
      jax.random.key(0),
      BlockSamplerConfig(
          gen_length=8,
          steps_per_block=4,
          strategy="low_confidence_dynamic",
          threshold=0.5,
          temperature=1.0,
      ),
  )
  rows = tracerl.build_batch(traj, np.zeros(4, np.float32), None, tracerl.TraceRLConfig(), cfg)
  return policy, vmodel, traj, rows


def test_zero_head_gives_returns_as_advantages(setup):
  policy, vmodel, traj, rows = setup
  mask = tracerl.attention_mask(rows, policy.config)
  v = value.value_fn(vmodel, rows, mask)
  assert float(jnp.abs(v).max()) == 0.0  # the head starts at zero
  rewards = np.array([1.0, -1.0, 0.5, 0.0], np.float32)
  g = traj.tokens.shape[1]
  returns, adv, values = value.returns_and_advantages(rows, v, rewards, 4, g, value.ValueConfig())
  kept = np.arange(g)[None] < np.asarray(traj.lengths)[:, None]
  # gamma = lambda = 1: every trained token's return is the sequence reward, A = R - V = R.
  np.testing.assert_allclose(returns[kept], np.broadcast_to(rewards[:, None], kept.shape)[kept])
  np.testing.assert_allclose(adv[kept], returns[kept])


def test_tokens_from_rows_covers_every_trained_token_once(setup):
  policy, _, traj, rows = setup
  g = traj.tokens.shape[1]
  ones = np.ones(rows["loss_mask"].shape, np.float32)
  cover = value.tokens_from_rows(ones, rows, 4, g)
  kept = np.arange(g)[None] < np.asarray(traj.lengths)[:, None]
  np.testing.assert_array_equal(cover, kept.astype(np.float32))


def test_value_training_lowers_value_loss(setup):
  policy, vmodel, traj, rows = setup
  mask = tracerl.attention_mask(rows, policy.config)
  batch = dict(rows)
  old_v = np.asarray(value.value_fn(vmodel, batch, mask))
  returns, _, _ = value.returns_and_advantages(
      batch, old_v, np.array([1.0, -1.0, 0.5, 0.0]), 4, traj.tokens.shape[1], value.ValueConfig()
  )
  value.scatter_to_rows(batch, returns, "returns")
  batch["old_values"] = old_v
  cfg = value.ValueConfig(eps=10.0)  # no clipping: the loss must fall freely
  graphdef, params, rest = nnx.split(vmodel, nnx.Param, ...)
  opt = optax.adam(1e-2)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state):
    def f(p):
      return value.value_loss_fn(nnx.merge(graphdef, p, rest), batch, cfg, mask)[0]

    loss, grads = jax.value_and_grad(f)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  losses = []
  for _ in range(15):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert losses[-1] < 0.5 * losses[0], losses


def test_value_config_validation():
  with pytest.raises(ValueError, match="gamma"):
    value.ValueConfig(gamma=1.5)
