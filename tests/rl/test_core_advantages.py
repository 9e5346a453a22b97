"""Group advantages, TraceRL's accuracy filter and trace-step GAE (tracerl.md §4, §7)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import warnings  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jdiff.rl import advantages as adv_lib  # noqa: E402
from jdiff.registry import Registry  # noqa: E402
from jdiff.rl.registry import advantage_estimators  # noqa: E402


def test_registry_lookup_and_error():
  assert advantage_estimators.get("grpo") is adv_lib.group_zscore
  assert advantage_estimators.get("group_zscore") is adv_lib.group_zscore
  assert advantage_estimators.get("group_mean") is adv_lib.group_mean_baseline
  assert advantage_estimators.get("trace_gae") is adv_lib.trace_gae
  with pytest.raises(KeyError, match="grpo"):
    advantage_estimators.get("nope")
  reg = Registry("thing")
  reg.register("a")(len)
  with pytest.raises(ValueError):
    reg.register("a")(abs)


def test_group_zscore_population_std_and_zero_std():
  r = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 4.0, 6.0], np.float32)
  a = np.asarray(adv_lib.group_zscore(r, 4))
  for g in range(3):
    x = r[4 * g : 4 * g + 4]
    want = (x - x.mean()) / x.std() if x.std() > 0 else np.zeros(4)
    np.testing.assert_allclose(a[4 * g : 4 * g + 4], want, rtol=1e-6, atol=1e-6)
  assert np.all(a[4:8] == 0.0)  # zero-std group -> 0
  np.testing.assert_allclose(a[:4], [1, -1, -1, 1], rtol=1e-6)  # ddof=0: std 0.5
  m = np.asarray(adv_lib.group_mean_baseline(r, 4))
  np.testing.assert_allclose(m[8:], [-3, -1, 1, 3], rtol=1e-6)
  with pytest.raises(ValueError):
    adv_lib.group_zscore(r, 5)


def test_group_filter_keeps_02_to_08_and_warns_when_empty():
  n = 16
  rewards = np.concatenate([(np.arange(n) < k).astype(np.float32) for k in (3, 4, 12, 13, 8)])
  keep = adv_lib.group_filter(rewards, n)
  assert keep.shape == rewards.shape
  np.testing.assert_array_equal(keep.reshape(5, n)[:, 0], [False, True, True, False, True])
  five = np.array([1, 1, 1, 1, 0, 1, 0, 0, 0, 0], np.float32)  # 0.8 and 0.2: both kept
  assert adv_lib.group_filter(five, 5).all()
  with pytest.warns(UserWarning, match="filtered"):
    keep = adv_lib.group_filter(np.ones(8), 4)
  assert not keep.any()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    adv_lib.group_filter(rewards, n)


def _brute_force_gae(step_ids, rewards, values, trainable, gamma, lam):
  """Plain-Python transcription of docs/methods.md §Diffusion value model, one response at a time."""
  bsz, g = step_ids.shape
  ret, adv = np.zeros((bsz, g)), np.zeros((bsz, g))
  for b in range(bsz):
    toks = [j for j in range(g) if trainable[b, j] and step_ids[b, j] > 0]
    steps = sorted({int(step_ids[b, j]) for j in toks})
    s = len(steps)
    r_star = [np.mean([rewards[b, j] for j in toks if step_ids[b, j] == t]) for t in steps]
    v_star = [np.mean([values[b, j] for j in toks if step_ids[b, j] == t]) for t in steps]
    big_r, big_a = [0.0] * (s + 1), [0.0] * (s + 1)
    v_next = v_star + [0.0]
    for t in reversed(range(s)):
      big_r[t] = r_star[t] + gamma * big_r[t + 1]
      delta = r_star[t] - v_star[t] + gamma * v_next[t + 1]
      big_a[t] = delta + gamma * lam * big_a[t + 1]
    for j in toks:
      t = steps.index(int(step_ids[b, j]))
      ret[b, j] = rewards[b, j] + gamma * big_r[t + 1]
      adv[b, j] = rewards[b, j] - values[b, j] + gamma * v_next[t + 1] + gamma * lam * big_a[t + 1]
  return ret, adv


def _random_trace(seed, bsz=3, g=12):
  rng = np.random.default_rng(seed)
  # Non-contiguous ids shared across "blocks", some pads (0) and some non-trainable tokens.
  step_ids = rng.choice([0, 1, 2, 3, 5, 8, 9], size=(bsz, g)).astype(np.int32)
  trainable = rng.random((bsz, g)) > 0.15
  rewards = rng.normal(size=(bsz, g)).astype(np.float32)
  values = rng.normal(size=(bsz, g)).astype(np.float32)
  return step_ids, rewards, values, trainable


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_trace_gae_matches_brute_force(gamma, lam):
  step_ids, rewards, values, trainable = _random_trace(int(gamma * 100 + lam * 10))
  step_ids[0] = 0  # a row with nothing to train
  ret, adv = jax.jit(adv_lib.trace_gae)(step_ids, rewards, values, trainable, gamma, lam)
  want_r, want_a = _brute_force_gae(step_ids, rewards, values, trainable, gamma, lam)
  np.testing.assert_allclose(np.asarray(ret), want_r, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(adv), want_a, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(ret)[0] == 0) and np.all(np.asarray(adv)[0] == 0)


def test_trace_gae_sanity_checks():
  step_ids, _, values, trainable = _random_trace(7)
  seq_reward = np.array([1.5, -0.5, 2.0], np.float32)
  token_r = np.asarray(adv_lib.outcome_token_rewards(step_ids, trainable, seq_reward))
  valid = trainable & (step_ids > 0)
  last = np.where(valid, step_ids, 0).max(axis=1, keepdims=True)
  np.testing.assert_array_equal(token_r != 0, valid & (step_ids == last))
  # γ = λ = 1: R_j is the sequence reward and A_j = R − V_j.
  ret, adv = adv_lib.trace_gae(step_ids, token_r, values, trainable, 1.0, 1.0)
  r_full = np.broadcast_to(seq_reward[:, None], valid.shape)
  np.testing.assert_allclose(np.asarray(ret)[valid], r_full[valid], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(adv)[valid], (r_full - values)[valid], rtol=1e-5, atol=1e-6)
  # γ = 1, λ = 0: A_j = r_j − V_j + V*_{t+1}.
  _, adv0 = adv_lib.trace_gae(step_ids, token_r, values, trainable, 1.0, 0.0)
  for b in range(step_ids.shape[0]):
    steps = sorted({int(s) for s in step_ids[b][valid[b]]})
    v_star = {t: values[b][valid[b] & (step_ids[b] == t)].mean() for t in steps}
    for j in np.flatnonzero(valid[b]):
      k = steps.index(int(step_ids[b, j]))
      v_next = v_star[steps[k + 1]] if k + 1 < len(steps) else 0.0
      want = token_r[b, j] - values[b, j] + v_next
      np.testing.assert_allclose(float(adv0[b, j]), want, rtol=1e-5, atol=1e-6)
