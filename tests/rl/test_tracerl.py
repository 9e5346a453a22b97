"""TraceRL end to end on a tiny block model: ratio 1 at the first step, and learning."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jdiff
from jdiff.rl import advantages as adv_lib
from jdiff.rl import tracerl
from jdiff.rl.method import methods
from jdiff.sampling import block
from jdiff.sampling.block import BlockSamplerConfig
from jdiff.train.update import init_train_state, make_update_step

LOW_IDS = 48  # toy reward: the fraction of completion tokens with an id below this


def _reward(traj):
  toks, lengths = np.asarray(traj.tokens), np.asarray(traj.lengths)
  kept = np.arange(toks.shape[1])[None] < lengths[:, None]
  return ((toks < LOW_IDS) & kept).sum(1) / np.maximum(kept.sum(1), 1)


@pytest.fixture(scope="module")
def model():
  cfg = jdiff.preset("tiny_sdar", eos_token_id=2)  # keep EOS rare so completions are long
  return jdiff.DiffusionLM(cfg, rngs=nnx.Rngs(0))


def test_registered():
  assert methods.get("tracerl") is tracerl.METHOD


def test_first_step_ratio_is_one_and_kl_zero(model):
  sampler = BlockSamplerConfig(gen_length=8, steps_per_block=4, temperature=1.0)
  traj = block.sample(model, [[5, 6, 7], [8, 9, 10, 11, 12]] * 2, None, jax.random.key(0), sampler)
  cfg = tracerl.TraceRLConfig()
  a = np.asarray(adv_lib.group_zscore(jnp.asarray(_reward(traj)), 2))
  batch = tracerl.build_batch(traj, a, None, cfg, model.config)
  batch["old_logp"] = tracerl.logprob_fn(model, batch, cfg)
  loss, metrics = tracerl.loss_fn(model, batch, cfg)
  assert float(metrics["ratio_mean"]) == 1.0
  assert float(metrics["kl"]) == 0.0
  assert float(metrics["clip_frac"]) == 0.0
  # The surrogate at ratio 1 is -(1/L1) Σ_P A, averaged over non-empty rows.
  m = np.asarray(batch["loss_mask"], np.float32)
  per_row = -(np.asarray(batch["advantages"]) * m).sum(1) / batch["row_norm"]
  np.testing.assert_allclose(float(loss), per_row[m.sum(1) > 0].mean(), rtol=1e-5, atol=1e-7)


def test_config_validation():
  with pytest.raises(ValueError, match="shrink"):
    tracerl.TraceRLConfig(shrink=0)
  with pytest.raises(ValueError, match="kl_against"):
    tracerl.TraceRLConfig(kl_against="reference")
  with pytest.raises(ValueError, match="kl_estimator"):
    tracerl.TraceRLConfig(kl_estimator="k2")


def test_kl_estimator_reaches_the_loss(monkeypatch):
  """TraceRL's loss uses the configured estimator against pi_old (here by hand: k1 = d)."""
  logp = np.array([[-1.0, -2.0, -0.7]], np.float32)
  old = np.array([[-1.2, -1.5, -0.7]], np.float32)
  monkeypatch.setattr(tracerl, "logprob_fn", lambda model, batch, cfg: jnp.asarray(logp))
  model = types.SimpleNamespace(config=types.SimpleNamespace(block_causal=True))
  batch = {
      "old_logp": old,
      "advantages": np.zeros((1,), np.float32),
      "loss_mask": np.ones((1, 3), np.float32),
      "row_norm": np.array([4.0], np.float32),
  }
  d = logp - old
  for est, kl in (("k1", d), ("k3", np.exp(-d) + d - 1)):
    cfg = tracerl.TraceRLConfig(beta=0.5, kl_estimator=est)
    loss, _ = tracerl.loss_fn(model, batch, cfg)
    np.testing.assert_allclose(float(loss), 0.5 * kl.sum() / 4.0, rtol=1e-5)


def test_tracerl_raises_reward(model):
  """A few rollout/update rounds on a toy reward raise the sampled reward (seeded)."""
  cfg = tracerl.TraceRLConfig(beta=0.0)
  sampler = BlockSamplerConfig(gen_length=8, steps_per_block=4, temperature=1.0)
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]]
  group = 4
  batch_prompts = [p for p in prompts for _ in range(group)]
  opt = optax.adam(3e-3)
  graphdef, state = init_train_state(model, opt)
  loss = functools.partial(tracerl.loss_fn, cfg=cfg)
  update = make_update_step(graphdef, opt, loss)
  score = jax.jit(
      lambda params, rest, batch: tracerl.logprob_fn(nnx.merge(graphdef, params, rest), batch, cfg)
  )

  def mean_reward(params, rest, seed):
    m = nnx.merge(graphdef, params, rest)
    traj = block.sample(m, batch_prompts * 2, None, jax.random.key(1000 + seed), sampler)
    return float(_reward(traj).mean())

  before = np.mean([mean_reward(state.params, state.rest, s) for s in range(2)])
  for it in range(6):
    m = nnx.merge(graphdef, state.params, state.rest)
    traj = block.sample(m, batch_prompts, None, jax.random.key(it), sampler)
    a = np.asarray(adv_lib.group_zscore(jnp.asarray(_reward(traj)), group))
    batch = tracerl.build_batch(traj, a, None, cfg, model.config)
    batch["old_logp"] = score(state.params, state.rest, batch)
    for _ in range(2):
      state, metrics = update(state, batch)
      assert int(metrics["skipped"]) == 0
  after = np.mean([mean_reward(state.params, state.rest, s) for s in range(2)])
  print(f"toy reward before {before:.3f} after {after:.3f}")
  assert after > before + 0.1, (before, after)


def test_loss_gradient_matches_naive_per_row_version(model):
  """Autodiff of TraceRL's batched loss equals autodiff of a plain per-row loop (full
  log_softmax, one row at a time, the §5.6 formula written out)."""
  sampler = BlockSamplerConfig(gen_length=8, steps_per_block=4, temperature=1.0)
  traj = block.sample(model, [[5, 6, 7], [8, 9, 10, 11, 12]], None, jax.random.key(3), sampler)
  cfg = tracerl.TraceRLConfig(beta=0.05, eps=0.2)
  a = np.array([0.7, -1.3], np.float32)
  batch = tracerl.build_batch(traj, a, None, cfg, model.config)
  old = np.asarray(tracerl.logprob_fn(model, batch, cfg))
  # Perturb old log-probs so some ratios leave the clip range and the KL is non-zero.
  batch["old_logp"] = old + np.random.default_rng(0).normal(0, 0.3, old.shape).astype(np.float32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def batched(p):
    return tracerl.loss_fn(nnx.merge(graphdef, p, rest), batch, cfg)[0]

  def naive(p):
    m = nnx.merge(graphdef, p, rest)
    total, rows = 0.0, 0
    for r in range(batch["input_ids"].shape[0]):
      sel = np.asarray(batch["loss_mask"][r])
      if not sel.any():
        continue
      one = {k: jnp.asarray(v[r : r + 1]) for k, v in batch.items()}
      logits, _ = m(one["input_ids"], one["positions"], tracerl.attention_mask(one, m.config))
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits[0]), one["targets"][0][:, None], 1)[:, 0]
      d = logp - one["old_logp"][0]
      ratio = jnp.exp(jnp.clip(d, -10, 10))
      adv = one["advantages"][0]
      surr = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.eps, 1 + cfg.eps) * adv)
      k3 = jnp.exp(jnp.clip(-d, -10, 10)) - 1 + d
      total += jnp.sum(jnp.where(sel, -surr + cfg.beta * k3, 0.0)) / batch["row_norm"][r]
      rows += 1
    return total / rows

  g1 = jax.grad(batched)(params)
  g2 = jax.jit(jax.grad(naive))(params)  # one compiled program: eager row loops are slow
  for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    scale = float(jnp.max(jnp.abs(y))) + 1e-12
    assert float(jnp.max(jnp.abs(x - y))) <= 1e-4 * scale + 1e-7
