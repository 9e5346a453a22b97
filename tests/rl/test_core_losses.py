"""Clipped policy / value losses (tracerl.md §5.6, §6, §7; d1 §2.2) and chunked log-probs."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

import jdiff  # noqa: E402
from jdiff.rl import logprobs as lp_lib  # noqa: E402
from jdiff.rl.losses import clipped_policy_loss, clipped_value_loss, k3_kl  # noqa: E402


def _rand(seed, shape, scale=1.0):
  return scale * np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_ratio_one_and_kl_zero_when_equal():
  logp = _rand(0, (3, 5)) - 2.0
  mask = np.ones((3, 5), np.float32)
  adv = np.array([1.0, -0.5, 2.0], np.float32)
  loss, m = clipped_policy_loss(logp, logp, adv, mask, kl_coef=0.1, ref_logp=logp)
  assert float(m["ratio_mean"]) == 1.0 and float(m["kl"]) == 0.0 and float(m["clip_frac"]) == 0
  np.testing.assert_allclose(float(loss), -adv.mean(), rtol=1e-6)  # token_mean of −A
  np.testing.assert_array_equal(np.asarray(k3_kl(jnp.asarray(logp), jnp.asarray(logp))), 0.0)


def test_clip_fraction_on_constructed_ratios():
  ratios = np.array([[0.5, 0.9, 1.1, 1.5], [0.5, 0.9, 1.1, 1.5]], np.float32)
  adv = np.array([1.0, -1.0], np.float32)
  mask = np.ones_like(ratios)
  loss, m = clipped_policy_loss(np.log(ratios), np.zeros_like(ratios), adv, mask, eps_low=0.2)
  # A > 0: only ratio 1.5 is clipped (high); A < 0: only ratio 0.5 (low).
  np.testing.assert_allclose(float(m["clip_frac"]), 2 / 8, atol=1e-6)
  np.testing.assert_allclose(float(m["clip_frac_high"]), 1 / 8, atol=1e-6)
  np.testing.assert_allclose(float(m["clip_frac_low"]), 1 / 8, atol=1e-6)
  surr = np.array([[0.5, 0.9, 1.1, 1.2], [-0.8, -0.9, -1.1, -1.5]])
  np.testing.assert_allclose(float(loss), -surr.mean(), rtol=1e-5)
  _, m2 = clipped_policy_loss(
      np.log(ratios), np.zeros_like(ratios), adv, mask, eps_low=0.2, eps_high=0.6
  )
  np.testing.assert_allclose(float(m2["clip_frac_high"]), 0.0, atol=1e-6)


def _by_hand(logp, old, ref, adv, mask, eps, beta, norm, row_norm):
  ratio = np.exp(logp - old)
  a = adv[:, None]
  surr = np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a)
  kl = np.exp(ref - logp) - (ref - logp) - 1
  rows = [i for i in range(len(adv)) if mask[i].sum() > 0]
  if norm == "token_mean":
    return ((-surr + beta * kl) * mask).sum() / mask.sum()
  if norm == "per_row_sum_over_length":
    return np.mean([((-surr[i] + beta * kl[i]) * mask[i]).sum() / row_norm[i] for i in rows])
  return np.mean(
      [-(surr[i] * mask[i]).sum() / mask[i].sum() + beta * (kl[i] * mask[i]).sum() for i in rows]
  )


@pytest.mark.parametrize("norm", ["token_mean", "per_row_sum_over_length", "per_row_mean"])
def test_normalisations_by_hand(norm):
  b, t = 4, 6
  logp, old, ref = _rand(1, (b, t), 0.3) - 1, _rand(2, (b, t), 0.3) - 1, _rand(3, (b, t), 0.3) - 1
  adv = _rand(4, (b,))
  mask = (np.random.default_rng(5).random((b, t)) > 0.4).astype(np.float32)
  mask[2] = 0.0  # an empty row is not counted in the row mean
  row_norm = np.array([6.0, 8.0, 6.0, 10.0], np.float32)
  loss, _ = clipped_policy_loss(
      logp,
      old,
      adv,
      mask,
      eps_low=0.2,
      kl_coef=0.3,
      ref_logp=ref,
      normalization=norm,
      row_norm=row_norm,
  )
  want = _by_hand(logp, old, ref, adv, mask, 0.2, 0.3, norm, row_norm)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_kl_defaults_to_old_policy_and_token_advantages():
  logp, old = _rand(6, (2, 3), 0.2), _rand(7, (2, 3), 0.2)
  mask = np.ones((2, 3), np.float32)
  adv_tok = _rand(8, (2, 3))
  l1, m1 = clipped_policy_loss(logp, old, adv_tok, mask, kl_coef=1.0)
  l2, _ = clipped_policy_loss(logp, old, adv_tok, mask, kl_coef=1.0, ref_logp=old)
  assert float(l1) == float(l2) and float(m1["kl"]) > 0


def test_k1_and_k3_kl_by_hand():
  # Zero advantages and logp == old: the loss is beta * mean KL over the 3 masked tokens.
  logp = np.array([[-1.0, -2.0, -0.5, -3.0]], np.float32)
  ref = np.array([[-1.5, -1.0, -0.5, 0.0]], np.float32)
  mask = np.array([[1, 1, 1, 0]], np.float32)
  adv = np.zeros((1,), np.float32)
  k1 = (0.5 + -1.0 + 0.0) / 3  # log pi - log pi_ref per token
  k3 = (np.exp(-0.5) + 0.5 - 1 + np.exp(1.0) - 1.0 - 1 + 0.0) / 3  # exp(r) - r - 1, r = ref - logp
  for name, want in (("k1", k1), ("k3", k3)):
    loss, m = clipped_policy_loss(
        logp, logp, adv, mask, kl_coef=0.1, ref_logp=ref, kl_estimator=name
    )
    np.testing.assert_allclose(float(loss), 0.1 * want, rtol=1e-6)
    np.testing.assert_allclose(float(m["kl"]), want, rtol=1e-6)
  # k1's gradient is beta / N on every masked token, whatever the reference says.
  g = jax.grad(
      lambda x: clipped_policy_loss(
          x, logp, adv, mask, kl_coef=0.1, ref_logp=ref, kl_estimator="k1"
      )[0]
  )(jnp.asarray(logp))
  np.testing.assert_allclose(np.asarray(g), 0.1 / 3 * mask, rtol=1e-6)
  with pytest.raises(ValueError, match="kl_estimator"):
    clipped_policy_loss(logp, logp, adv, mask, kl_estimator="k2")


def test_policy_loss_gradient_matches_finite_differences():
  rng = np.random.default_rng(9)
  old = (rng.normal(size=(2, 4)) * 0.1 - 1.0).astype(np.float32)
  ref = (rng.normal(size=(2, 4)) * 0.1 - 1.0).astype(np.float32)
  # log-ratios inside and outside the clip range [log 0.95, log 1.05], away from its kinks.
  d = np.array([[-0.3, -0.02, 0.03, 0.2], [0.25, -0.01, -0.2, 0.02]], np.float32)
  x0 = old + d
  adv = np.array([1.3, -0.7], np.float32)
  mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1]], np.float32)
  for norm in ("token_mean", "per_row_sum_over_length", "per_row_mean"):
    f = lambda x: clipped_policy_loss(
        x,
        old,
        adv,
        mask,
        eps_low=0.05,
        kl_coef=0.2,
        ref_logp=ref,
        normalization=norm,
        row_norm=np.array([4.0, 5.0], np.float32),
    )[0]
    g = np.asarray(jax.grad(f)(jnp.asarray(x0)))
    num = np.zeros_like(x0)
    h = 1e-3
    for idx in np.ndindex(x0.shape):
      e = np.zeros_like(x0)
      e[idx] = h
      num[idx] = (float(f(jnp.asarray(x0 + e))) - float(f(jnp.asarray(x0 - e)))) / (2 * h)
    np.testing.assert_allclose(g, num, atol=3e-4)
    assert np.all(g[mask == 0] == 0)


def test_value_loss_by_hand():
  v, v_old, ret = _rand(10, (3, 4)), _rand(11, (3, 4)), _rand(12, (3, 4))
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]], np.float32)
  row_norm = np.array([4.0, 4.0, 6.0], np.float32)
  loss, m = clipped_value_loss(v, v_old, ret, mask, eps=0.2, row_norm=row_norm)
  v_clip = v_old + np.clip(v - v_old, -0.2, 0.2)
  ell = 0.5 * np.maximum((v - ret) ** 2, (v_clip - ret) ** 2)
  want = np.mean((ell * mask).sum(1) / row_norm)
  np.testing.assert_allclose(float(loss), want, rtol=1e-5)
  assert 0.0 <= float(m["value_clip_frac"]) <= 1.0


@pytest.mark.parametrize("chunk", [7, 128])
def test_chunked_logprobs_equal_naive_with_gradients(chunk):
  k = jax.random.split(jax.random.key(0), 5)
  b, t, d, v = 2, 6, 16, 100
  h = jax.random.normal(k[0], (b, t, d))
  w = jax.random.normal(k[1], (d, v)) * 0.5
  tgt = jax.random.randint(k[2], (b, t), 0, v)
  c1, c2 = jax.random.normal(k[3], (b, t)), jax.random.normal(k[4], (b, t))

  def naive(h, w):
    lp = jax.nn.log_softmax(jnp.einsum("btd,dv->btv", h, w), axis=-1)
    return jnp.take_along_axis(lp, tgt[..., None], -1)[..., 0], -jnp.sum(jnp.exp(lp) * lp, -1)

  chunked = lambda h, w: lp_lib.token_logprobs_chunked(h, w, tgt, chunk, return_entropy=True)
  for got, want in zip(jax.jit(chunked)(h, w), naive(h, w)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  obj = lambda fn: lambda h, w: jnp.sum(fn(h, w)[0] * c1) + jnp.sum(fn(h, w)[1] * c2)
  g_got = jax.jit(jax.grad(obj(chunked), argnums=(0, 1)))(h, w)
  g_want = jax.jit(jax.grad(obj(naive), argnums=(0, 1)))(h, w)
  for a, b_ in zip(g_got, g_want):
    # Each entry sums B*T (or V) terms that partly cancel: the float32 reordering noise scales
    # with the largest entries, not with the entry itself.
    b_ = np.asarray(b_)
    np.testing.assert_allclose(np.asarray(a), b_, rtol=1e-5, atol=1e-5 * np.abs(b_).max())


@pytest.mark.parametrize("name", ["tiny_sdar", "tiny_dream"])
def test_model_token_logprobs_matches_forward(name):
  model = jdiff.DiffusionLM(jdiff.preset(name), rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 128)
  targets = jax.random.randint(jax.random.key(2), (2, 8), 0, 128)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state):
    m = nnx.merge(graphdef, state)
    logits, _ = m(tokens)
    if m.config.shift_logits:
      logits = lp_lib.shift_for_dream(logits)
    want = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), targets[..., None], -1)[..., 0]
    return want, lp_lib.model_token_logprobs(m, tokens, None, None, targets, chunk_size=48)

  want, got = run(state)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  x = jnp.arange(6).reshape(1, 3, 2)
  np.testing.assert_array_equal(np.asarray(lp_lib.shift_for_dream(x))[0, :, 0], [0, 0, 2])
