"""Coupled-GRPO (DiffuCoder) and dLLM-RL's random-masking baseline on tiny models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.rl import advantages as adv_lib
from jdiff.rl import coupled_grpo as cg
from jdiff.rl import random_masking as rm
from jdiff.rl import tracerl
from jdiff.rl.method import methods
from rl_toys import EOS, MASK, PROMPTS, TARGET, learn, make_traj, target_reward, toy_trajectory

COMPLETIONS = [
    [20, 21, EOS, 22, 23, 24, 25],
    [25, 26, 27, 28, 29, 30, 31],
    [31, EOS],
    [32, 33, 34, 35, EOS],
]


# ----------------------------------------------------------------------------- coupled-GRPO


def test_coupled_registered_and_defaults():
  assert methods.get("coupled_grpo") is cg.METHOD
  cfg = cg.CoupledGRPOConfig()
  assert (cfg.t_low, cfg.t_high, cfg.rows_per_response) == (0.2, 0.8, 3)
  with pytest.raises(ValueError, match="t_low"):
    cg.CoupledGRPOConfig(t_low=0.0)


@pytest.mark.parametrize("full_mask_row", [True, False])
def test_coupled_masks_complementary_and_weights(full_mask_row):
  mc = jdiff.preset("tiny_dream")
  traj = make_traj(PROMPTS, COMPLETIONS, 7)
  cfg = cg.CoupledGRPOConfig(num_iterations=3, full_mask_row=full_mask_row)
  b = cg.build_batch(traj, np.zeros(4, np.float32), jax.random.key(0), cfg, mc)
  p, g, v = traj.prompt_ids.shape[1], 7, cfg.rows_per_response
  ids, w = b["iteration_input_ids"], b["iteration_row_weights"]
  t, m_t = b["iteration_t"], b["iteration_coupled_mask"]
  assert ids.shape == (4, 3, v, p + g) and w.shape == (4, 3, v, g)
  assert np.all((t >= 0.2) & (t <= 0.8)) and len(np.unique(t)) == t.size  # per response
  assert np.all(ids[..., :p] == np.asarray(traj.prompt_ids)[:, None, None])  # prompt intact
  masked = ids[..., p:] == MASK
  pair, pw = masked[:, :, -2:], w[:, :, -2:]
  np.testing.assert_array_equal(pair[:, :, 0], m_t)
  np.testing.assert_array_equal(pair[:, :, 1], ~m_t)  # the complement
  # Unmasked positions of a pair row hold the completion token.
  toks = np.broadcast_to(np.asarray(traj.tokens)[:, None, None], pair.shape)
  np.testing.assert_array_equal(ids[..., p:][:, :, -2:][~pair], toks[~pair])
  # Every completion token is scored exactly once across the pair, where it is masked.
  np.testing.assert_array_equal((pw > 0).sum(2), np.ones((4, 3, g)))
  assert np.all(pair[pw > 0])
  half = 0.5 if full_mask_row else 1.0
  np.testing.assert_allclose(pw[:, :, 0], np.where(m_t, half / t[..., None], 0), rtol=1e-6)
  np.testing.assert_allclose(pw[:, :, 1], np.where(~m_t, half / (1 - t[..., None]), 0), rtol=1e-6)
  if full_mask_row:
    assert np.all(masked[:, :, 0]) and np.all(w[:, :, 0] == 0.5)
  assert np.any(m_t[:, 1] != m_t[:, 0])  # a fresh draw per inner iteration
  sel = cg.select_iteration(b, 2)
  np.testing.assert_array_equal(sel["input_ids"], ids[:, 2])
  np.testing.assert_array_equal(sel["row_weights"], w[:, 2])
  np.testing.assert_array_equal(b["loss_mask"].sum(1), [3, 7, 2, 5])


def test_coupled_logprob_matches_naive_and_first_step_ratio_is_one(models):
  model = models("tiny_dream")
  traj = make_traj(PROMPTS, COMPLETIONS, 7)
  cfg = cg.CoupledGRPOConfig(chunk_size=64)
  adv = np.array([0.5, -0.5, 1.0, -1.0], np.float32)
  batch = cg.select_iteration(cg.build_batch(traj, adv, jax.random.key(1), cfg, model.config), 1)
  logp = cg.logprob_fn(model, batch, cfg)
  # Naive: three full forwards per response; ½(ℓ_full + ℓ_pair / t or / (1 − t)).
  ids = batch["input_ids"]
  r, v, n = ids.shape
  valid = np.repeat(batch["valid"], v, 0)
  mask = (valid[:, :, None] & valid[:, None, :]) | np.eye(n, dtype=bool)
  logits, _ = model(ids.reshape(r * v, n), np.repeat(batch["positions"], v, 0), mask)
  lp = jax.nn.log_softmax(logits, -1)[:, n - 8 : n - 1]  # Dream: position i−1 predicts i
  lp = jnp.take_along_axis(lp, np.repeat(batch["targets"], v, 0)[..., None], -1)[..., 0]
  lp = np.asarray(lp).reshape(r, v, -1)
  t, m_t = batch["t"][:, None], batch["coupled_mask"]
  want = 0.5 * (lp[:, 0] + np.where(m_t, lp[:, 1] / t, lp[:, 2] / (1 - t)))
  np.testing.assert_allclose(np.asarray(logp), want, rtol=1e-5, atol=1e-5)
  batch["old_logp"] = batch["ref_logp"] = logp
  loss, metrics = cg.loss_fn(model, batch, cfg)
  assert float(metrics["ratio_mean"]) == 1.0 and float(metrics["kl"]) == 0.0
  lm = batch["loss_mask"]
  np.testing.assert_allclose(float(loss), -(adv[:, None] * lm).sum() / lm.sum(), rtol=1e-5)


def test_coupled_grpo_raises_rewarded_token_logprob(models):
  model = models("tiny_dream")
  traj, group = toy_trajectory(1)
  cfg = cg.CoupledGRPOConfig(num_iterations=3, chunk_size=64)
  adv = np.asarray(cg.compute_advantages(jnp.asarray(target_reward(traj)), group))
  batch = cg.build_batch(traj, adv, jax.random.key(0), cfg, model.config)

  def prepare(score):
    batch["old_logp"] = batch["ref_logp"] = cg.iteration_logprobs(score, batch)
    probe = cg.select_iteration(batch, 0)
    probe["targets"] = np.full_like(probe["targets"], TARGET)
    return [cg.select_iteration(batch, m) for m in range(cfg.num_iterations)], probe

  before, after = learn(model, cg, cfg, prepare)
  assert after > before + 0.2, (before, after)


# --------------------------------------------------------------------------- random masking


def test_random_masking_registered_and_draws():
  assert methods.get("random_masking") is rm.METHOD
  cfg = rm.RandomMaskingConfig()
  rate, masked = rm.draw_masks(jax.random.key(0), (64, 256), cfg)
  assert rate.min() >= 0.1 and rate.max() <= 0.9
  assert len(np.unique(rate[0])) == 256  # drawn per position
  assert abs(masked.mean() - 0.5) < 0.02  # E[U(0.1, 0.9)]
  lo, hi = rate < 0.3, rate > 0.7
  assert masked[lo].mean() < 0.25 < 0.75 < masked[hi].mean()
  rate, _ = rm.draw_masks(jax.random.key(0), (8, 16), rm.RandomMaskingConfig(rate_per="row"))
  assert np.all(rate == rate[:, :1]) and len(np.unique(rate[:, 0])) == 8
  with pytest.raises(ValueError, match="rate_per"):
    rm.RandomMaskingConfig(rate_per="block")


def test_random_masking_full_attention_rows():
  mc = jdiff.preset("tiny_llada")
  traj = make_traj(PROMPTS, COMPLETIONS, 7)
  cfg = rm.RandomMaskingConfig(masks_per_response=3, complementary=True)
  b = rm.build_batch(traj, np.arange(4, dtype=np.float32), jax.random.key(0), cfg, mc)
  p, g = traj.prompt_ids.shape[1], 7
  assert b["input_ids"].shape == (24, p + g)
  np.testing.assert_array_equal(b["response_index"], np.repeat(np.arange(4), 6))
  ids, toks = b["input_ids"], np.repeat(np.asarray(traj.tokens), 6, 0)
  masked = ids[:, p:] == MASK
  np.testing.assert_array_equal(ids[:, :p], np.repeat(np.asarray(traj.prompt_ids), 6, 0))
  np.testing.assert_array_equal(ids[:, p:][~masked], toks[~masked])
  np.testing.assert_array_equal(masked[0::2], ~masked[1::2])  # complementary pairs
  kept = np.arange(g)[None] < np.repeat(np.asarray(traj.lengths), 6)[:, None]
  np.testing.assert_array_equal(b["loss_mask"][:, p:], masked & kept)
  assert not b["loss_mask"][:, :p].any()
  np.testing.assert_array_equal(
      b["advantages"][:, p:], np.where(masked & kept, np.repeat(np.arange(4), 6)[:, None], 0)
  )
  assert np.all(b["valid"][:, p:]) and np.all(b["targets"][:, p:] == toks)


def test_random_masking_block_rows_match_plain_block_causal_canvas(models):
  """Each noisy block of the x_t ⊕ x_0 row sees what a plain block-causal canvas shows it:
  the prompt, the clean earlier blocks and its own (partly masked) block."""
  model = models("tiny_sdar")
  c = model.config
  traj = make_traj(PROMPTS[:3], COMPLETIONS[:3], 7)
  cfg = rm.RandomMaskingConfig(complementary=True, chunk_size=64)
  b = rm.build_batch(traj, np.ones(3, np.float32), jax.random.key(2), cfg, c)
  g = 7
  lp = np.asarray(tracerl.logprob_fn(model, b, cfg))[:, -g:]
  pids, pm = np.asarray(traj.prompt_ids), np.asarray(traj.prompt_mask)
  p = pids.shape[1]
  rows, noisy = b["input_ids"].shape[0], b["input_ids"][:, -g:]
  np.testing.assert_array_equal(noisy[0::2] == MASK, noisy[1::2] != MASK)
  plen = pm.sum(1)
  ridx = b["response_index"]
  canvases, checks = [], []
  for r in range(rows):
    i = ridx[r]
    rblk = (plen[i] + np.arange(g)) // c.block_size
    decoded = np.asarray(traj.step_map)[i] > 0
    for k in np.unique(rblk[decoded]):
      resp = np.where(rblk < k, np.asarray(traj.tokens)[i], noisy[r])
      pos = np.concatenate([np.maximum(np.cumsum(pm[i]) - 1, 0), plen[i] + np.arange(g)])
      canvases.append((np.concatenate([pids[i], resp]), pos, np.concatenate([pm[i], decoded])))
      checks.append((r, b["loss_mask"][r, -g:] & (rblk == k)))
  ids, pos, valid = (np.stack(x) for x in zip(*canvases))
  logits, _ = model(ids, pos, valid)  # 2-D key padding -> native block-causal mask
  tgt = np.asarray(traj.tokens)[ridx[[r for r, _ in checks]]]
  ref = jnp.take_along_axis(jax.nn.log_softmax(logits[:, p:], -1), tgt[..., None], -1)[..., 0]
  n_checked = 0
  for j, (r, sel) in enumerate(checks):
    np.testing.assert_allclose(lp[r][sel], np.asarray(ref[j])[sel], rtol=1e-5, atol=1e-6)
    n_checked += sel.sum()
  assert n_checked == b["loss_mask"].sum() > 0


def test_random_masking_raises_rewarded_token_logprob(models):
  model = models("tiny_sdar")
  traj, group = toy_trajectory(2)
  cfg = rm.RandomMaskingConfig(beta=0.0, chunk_size=64, complementary=True)
  adv = np.asarray(adv_lib.group_zscore(jnp.asarray(target_reward(traj)), group))
  batch = rm.build_batch(traj, adv, jax.random.key(0), cfg, model.config)

  def prepare(score):
    batch["old_logp"] = score(batch)
    return [batch] * 4, dict(batch, targets=np.where(batch["loss_mask"], TARGET, batch["targets"]))

  before, after = learn(model, rm.METHOD, cfg, prepare)
  assert after > before + 0.2, (before, after)
