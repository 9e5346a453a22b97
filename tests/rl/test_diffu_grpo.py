"""diffu-GRPO (d1, docs/methods.md §diffu-GRPO (d1)): prompt-masked one-step log-probs, μ
shared mask draws, the token-mean clipped loss with k3 to a frozen reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdiff
from jdiff.rl import advantages as adv_lib
from jdiff.rl import diffu_grpo as dg
from jdiff.rl.method import methods
from rl_toys import EOS, MASK, PAD, PROMPTS, TARGET, learn, make_traj, target_reward, toy_trajectory

COMPLETIONS = [[20, 21, EOS, 22, 23, 24], [25, 26, 27, 28, 29, 30], [31, EOS], [32, 33, 34, EOS]]


def test_registered():
  assert methods.get("diffu_grpo") is dg.METHOD
  cfg = dg.DiffuGRPOConfig()
  assert (cfg.p_mask_prompt, cfg.num_iterations, cfg.eps, cfg.beta) == (0.15, 12, 0.5, 0.04)
  with pytest.raises(ValueError, match="p_mask_prompt"):
    dg.DiffuGRPOConfig(p_mask_prompt=1.0)


def test_layout_and_completion_mask():
  mc = jdiff.preset("tiny_llada")
  traj = make_traj(PROMPTS, COMPLETIONS, 6)
  cfg = dg.DiffuGRPOConfig(num_iterations=3, p_mask_prompt=0.5)
  b = dg.build_batch(traj, np.arange(4, dtype=np.float32), jax.random.key(0), cfg, mc)
  p = traj.prompt_ids.shape[1]
  ids = b["iteration_input_ids"]
  assert ids.shape == (4, 3, p + 6)
  assert np.all(ids[:, :, p:] == MASK)  # completion fully masked in every draw
  np.testing.assert_array_equal(b["input_ids"], ids[:, 0])
  pm = np.asarray(traj.prompt_mask)
  # Only real prompt tokens are masked; unmasked ones keep their id; pads stay pads.
  kept = ids[:, :, :p] != MASK
  np.testing.assert_array_equal(
      np.where(kept, ids[:, :, :p], -1), np.where(kept, np.asarray(traj.prompt_ids)[:, None], -1)
  )
  assert np.all(ids[:, :, :p][~np.broadcast_to(pm[:, None], kept.shape)] == PAD)
  # Positions count real tokens; the completion continues from the prompt length.
  np.testing.assert_array_equal(b["positions"][1], np.arange(p + 6))
  np.testing.assert_array_equal(b["positions"][2, p:], 2 + np.arange(6))
  np.testing.assert_array_equal(b["valid"][:, :p], pm)
  # Loss mask: up to and including the first EOS.
  np.testing.assert_array_equal(b["loss_mask"].sum(1), [3, 6, 2, 4])
  assert b["loss_mask"][0, 2] and not b["loss_mask"][0, 3]


def test_mask_draws_shared_and_fresh_per_iteration():
  mc = jdiff.preset("tiny_llada")
  prompts = [list(range(4, 4 + n)) for n in range(40, 60)]
  traj = make_traj(prompts, [[20, 21]] * len(prompts), 2)
  adv = np.zeros(len(prompts), np.float32)
  cfg = dg.DiffuGRPOConfig(num_iterations=4)
  a = dg.build_batch(traj, adv, jax.random.key(1), cfg, mc)
  b = dg.build_batch(traj, adv, jax.random.key(1), cfg, mc)
  c = dg.build_batch(traj, adv, jax.random.key(2), cfg, mc)
  np.testing.assert_array_equal(a["iteration_input_ids"], b["iteration_input_ids"])
  ids = a["iteration_input_ids"]
  for m in range(1, 4):
    assert np.any(ids[:, m] != ids[:, 0])  # a fresh draw per inner iteration
  assert np.any(c["iteration_input_ids"] != ids)
  # Masking rate ≈ p_mask_prompt over real prompt tokens.
  p = traj.prompt_ids.shape[1]
  real = np.broadcast_to(np.asarray(traj.prompt_mask)[:, None], ids[:, :, :p].shape)
  rate = (ids[:, :, :p] == MASK)[real].mean()
  assert abs(rate - 0.15) < 0.015, rate
  # Without random masking every iteration (and every batch) uses seed 42's draw.
  fixed = dg.DiffuGRPOConfig(num_iterations=3, random_masking=False)
  f1 = dg.build_batch(traj, adv, jax.random.key(1), fixed, mc)["iteration_input_ids"]
  f2 = dg.build_batch(traj, adv, jax.random.key(9), fixed, mc)["iteration_input_ids"]
  np.testing.assert_array_equal(f1, f2)
  assert np.all(f1 == f1[:, :1])
  # π_old / π_ref for iteration m are scored on exactly the input iteration m trains on.
  score = lambda bt: np.repeat(np.asarray(bt["input_ids"])[:, :p].sum(1, keepdims=True), 2, 1)
  a["old_logp"] = a["ref_logp"] = np.asarray(dg.iteration_logprobs(score, a))
  assert a["old_logp"].shape == (len(prompts), 4, 2)
  for m in range(4):
    bm = dg.select_iteration(a, m)
    assert not any(k.startswith("iteration_") for k in bm)
    np.testing.assert_array_equal(bm["old_logp"], score(bm))
    np.testing.assert_array_equal(bm["ref_logp"], score(bm))
    np.testing.assert_array_equal(bm["input_ids"], ids[:, m])


def test_first_step_ratio_one_and_kl_zero(llada):
  traj = make_traj(PROMPTS, COMPLETIONS, 6)
  cfg = dg.DiffuGRPOConfig(num_iterations=2, chunk_size=48)
  adv = np.asarray(adv_lib.group_mean_baseline(jnp.array([1.0, 0.0, 0.5, 0.25]), 2))
  batch = dg.select_iteration(dg.build_batch(traj, adv, jax.random.key(0), cfg, llada.config), 1)
  logp = dg.logprob_fn(llada, batch, cfg)
  batch["old_logp"] = batch["ref_logp"] = logp
  loss, metrics = dg.loss_fn(llada, batch, cfg)
  assert float(metrics["ratio_mean"]) == 1.0 and float(metrics["kl"]) == 0.0
  lm = batch["loss_mask"]
  expected = -(adv[:, None] * lm).sum() / lm.sum()  # token mean of −A at ratio 1
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-7)


def _naive_row_loss(model, ids, pos, valid, targets, kept, old, ref, a, eps, beta):
  """One row, token by token: full logits, log-softmax, d1's per-token loss, summed."""
  n, g = ids.shape[0], targets.shape[0]
  p = n - g
  mask = (valid[:, None] & valid[None, :]) | jnp.eye(n, dtype=bool)
  logits, _ = model(ids[None], pos[None], mask[None])
  logp = jax.nn.log_softmax(logits[0], axis=-1)
  total = 0.0
  for k in range(g):
    src = p + k - 1 if model.config.shift_logits else p + k  # Dream: i−1 predicts i
    lp = logp[src, targets[k]]
    ratio = jnp.exp(lp - old[k])
    surr = jnp.minimum(ratio * a, jnp.clip(ratio, 1 - eps, 1 + eps) * a)
    d = ref[k] - lp
    total = total + jnp.where(kept[k], -surr + beta * (jnp.exp(d) - d - 1), 0.0)
  return total


@pytest.mark.parametrize("preset", ["tiny_llada", "tiny_dream"])
def test_gradient_matches_naive(models, preset):
  model = models(preset)
  traj = make_traj(PROMPTS, COMPLETIONS, 6)
  cfg = dg.DiffuGRPOConfig(num_iterations=2, beta=0.3, chunk_size=48)
  adv = np.array([1.0, -0.5, 0.7, -1.2], np.float32)
  batch = dg.select_iteration(dg.build_batch(traj, adv, jax.random.key(3), cfg, model.config), 1)
  graphdef, state = nnx.split(model)
  logp = np.asarray(jax.jit(lambda s: dg.logprob_fn(nnx.merge(graphdef, s), batch, cfg))(state))
  rng = np.random.default_rng(0)
  batch["old_logp"] = logp + rng.uniform(-0.9, 0.9, logp.shape).astype(np.float32)  # clips
  batch["ref_logp"] = logp + rng.uniform(-0.5, 0.5, logp.shape).astype(np.float32)
  l1, g1 = jax.jit(jax.value_and_grad(lambda s: dg.loss_fn(nnx.merge(graphdef, s), batch, cfg)[0]))(
      state
  )
  # The naive loss: rows one at a time (one jitted row function), summed, / #tokens.
  row = jax.jit(
      jax.value_and_grad(
          lambda s, *xs: _naive_row_loss(nnx.merge(graphdef, s), *xs, cfg.eps, cfg.beta)
      )
  )
  l2, g2 = 0.0, None
  for i in range(adv.shape[0]):
    li, gi = row(
        state,
        *(
            jnp.asarray(batch[k][i])
            for k in (
                "input_ids",
                "positions",
                "valid",
                "targets",
                "loss_mask",
                "old_logp",
                "ref_logp",
                "advantages",
            )
        ),
    )
    l2, g2 = l2 + li, gi if g2 is None else jax.tree.map(jnp.add, g2, gi)
  count = batch["loss_mask"].sum()
  np.testing.assert_allclose(float(l1), float(l2) / count, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b) / count, rtol=2e-4, atol=2e-6)


def test_block_model_uses_native_block_causal_mask(models):
  model = models("tiny_sdar")
  traj = make_traj(PROMPTS[:2], COMPLETIONS[:2], 6)
  cfg = dg.DiffuGRPOConfig(num_iterations=1, chunk_size=64)
  batch = dg.build_batch(traj, np.zeros(2, np.float32), jax.random.key(0), cfg, model.config)
  got = dg.logprob_fn(model, batch, cfg)
  # Reference: the model's own 2-D key-padding path (block-causal at absolute positions).
  logits, _ = model(batch["input_ids"], batch["positions"], batch["valid"])
  ref = jax.nn.log_softmax(logits[:, -6:], -1)
  ref = jnp.take_along_axis(ref, jnp.asarray(batch["targets"])[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_diffu_grpo_raises_rewarded_token_logprob(llada):
  traj, group = toy_trajectory(0)
  cfg = dg.DiffuGRPOConfig(num_iterations=4, chunk_size=64)
  adv = np.asarray(dg.compute_advantages(jnp.asarray(target_reward(traj)), group))
  batch = dg.build_batch(traj, adv, jax.random.key(0), cfg, llada.config)

  def prepare(score):
    batch["old_logp"] = batch["ref_logp"] = dg.iteration_logprobs(score, batch)
    probe = dg.select_iteration(batch, 0)
    probe["targets"] = np.full_like(probe["targets"], TARGET)
    return [dg.select_iteration(batch, m) for m in range(cfg.num_iterations)], probe

  before, after = learn(llada, dg, cfg, prepare)
  assert after > before + 0.2, (before, after)
