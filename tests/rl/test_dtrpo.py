"""dTRPO (docs/methods.md): per-block states in one x_t ⊕ x_0 row per response and draw, the DPO
loss on the policy-vs-reference log-ratio of the scored tokens; the estimators' weights and
grid, recorded orders, K draws, shared t, and Dream's logit alignment against per-block
forwards. Their expectations are checked exactly in test_dtrpo_draws.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jdiff
from jdiff.rl import dtrpo
from jdiff.rl.method import methods

M = 3  # tiny presets' mask id
PAIRS = dtrpo.PreferencePairs.from_lists(
    prompts=[[5, 6, 7], [8, 9, 10, 11, 12]],
    chosen=[[20, 21, 22, 23, 24, 25, 1], [30, 31, 32, 33, 1]],
    rejected=[[40, 41, 42, 43, 44, 1], [50, 51, 1]],
    pad_id=1,
    width=7,
)
CFGS = {
    "tiny_sdar": dtrpo.DTRPOConfig(),
    "tiny_llada": dtrpo.DTRPOConfig(block_length=3, block_weight="inverse_t"),
}


@pytest.fixture(scope="module", params=["tiny_sdar", "tiny_llada"])
def setup(request):
  """Model, reference, config, batch and the jitted ``(params, batch)`` functions."""
  name = request.param
  cfg = CFGS[name]
  model = jdiff.DiffusionLM(jdiff.preset(name), rngs=nnx.Rngs(0))
  ref = jdiff.DiffusionLM(jdiff.preset(name), rngs=nnx.Rngs(1))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  merge = lambda p: nnx.merge(graphdef, p, rest)
  logp = jax.jit(lambda p, b: dtrpo.logprob_fn(merge(p), b, cfg))
  value_grad = jax.jit(
      jax.value_and_grad(lambda p, b: dtrpo.loss_fn(merge(p), b, cfg), has_aux=True)
  )
  batch = dtrpo.build_batch(PAIRS, None, jax.random.key(0), cfg, model.config)
  return dict(
      name=name,
      cfg=cfg,
      model=model,
      params=params,
      graphdef=graphdef,
      rest=rest,
      ref_params=nnx.split(ref, nnx.Param, ...)[1],
      logp=logp,
      value_grad=value_grad,
      batch=batch,
  )


def _response_blocks(name, cfg, plen, g):
  if name == "tiny_sdar":
    blk = (plen + np.arange(g)) // jdiff.preset(name).block_size
  else:
    blk = np.arange(g) // cfg.block_length
  return blk - blk[0]


def test_remasking(setup):
  name, cfg, batch = setup["name"], setup["cfg"], setup["batch"]
  mc = setup["model"].config
  g = PAIRS.chosen.shape[1]
  toks = np.concatenate([PAIRS.chosen, PAIRS.rejected])
  lengths = np.concatenate([PAIRS.chosen_lengths, PAIRS.rejected_lengths])
  plens = np.tile(PAIRS.prompt_mask.sum(-1), 2)
  assert batch["input_ids"].shape[0] == 4
  np.testing.assert_array_equal(batch["response_index"], [0, 1, 0, 1])
  for r in range(4):
    real = np.arange(g) < lengths[r]
    remask = batch["loss_mask"][r, -g:]
    assert not batch["loss_mask"][r, :-g].any()
    assert not (remask & ~real).any()
    # the noisy response: re-masked tokens are masks, the others y; targets are y
    np.testing.assert_array_equal(
        batch["input_ids"][r, -g:][real], np.where(remask, M, toks[r])[real]
    )
    np.testing.assert_array_equal(batch["targets"][r, -g:][real], toks[r][real])
    assert batch["noisy"][r, -g:].all()
    # the clean copy of the response is untouched, and no mask id sits outside the noisy copy
    n = batch["input_ids"].shape[1]
    off = mc.block_size if name == "tiny_sdar" else 0  # the noisy window's prompt-tail slots
    np.testing.assert_array_equal(
        batch["input_ids"][r, n - 2 * g - off : n - g - off][real], toks[r][real]
    )
    assert not (batch["input_ids"][r][~batch["noisy"][r]] == M).any()
    blocks = _response_blocks(name, cfg, plens[r], g)
    for k in np.unique(blocks[real]):
      in_k = real & (blocks == k)
      m = int(remask[in_k].sum())
      assert 1 <= m <= in_k.sum()  # every block re-masks at least one token
      w = 1.0 if cfg.block_weight == "one" else in_k.sum() / m
      np.testing.assert_allclose(batch["token_weight"][r, -g:][in_k & remask], w, rtol=1e-6)
  # The draws are a function of the key: θ and ref (and every inner step) see the same masks.
  again = dtrpo.build_batch(PAIRS, None, jax.random.key(0), cfg, mc)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])
  other = [dtrpo.build_batch(PAIRS, None, jax.random.key(i), cfg, mc)["loss_mask"] for i in (1, 2)]
  assert any((o != batch["loss_mask"]).any() for o in other)
  assert methods.get("dtrpo").build_batch is dtrpo.build_batch


def test_reference_policy_gives_log2(setup):
  batch = dict(setup["batch"])
  batch["ref_logp"] = np.asarray(setup["logp"](setup["params"], batch))
  (loss, m), _ = setup["value_grad"](setup["params"], batch)
  np.testing.assert_allclose(loss, math.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(m["margin"], 0.0, atol=1e-6)


def _naive(setup, batch):
  """Loss and gradient from separate unbatched forwards per (response, block): the sequence
  ``[prompt | y_<b clean | ỹ_b]`` under block-causal attention (SDAR: its absolute blocks;
  LLaDA: prompt = block 0, then blocks of block_length), full-vocab log-softmax; the DPO
  gradient by the chain rule over the per-block terms."""
  name, cfg = setup["name"], setup["cfg"]
  graphdef, rest = setup["graphdef"], setup["rest"]
  g = PAIRS.chosen.shape[1]
  n = PAIRS.prompt_ids.shape[1] + g  # right-padded length: one compile

  def term(params, ids, valid, bid, targets, w):
    mask = valid[None, :] & valid[:, None] & (bid[None, :] <= bid[:, None])
    mask = mask | (jnp.eye(n, dtype=bool) & ~valid[:, None])
    logits, _ = nnx.merge(graphdef, params, rest)(ids[None], jnp.arange(n)[None], mask[None])
    lp = jax.nn.log_softmax(logits[0], -1)[jnp.arange(n), targets]
    return jnp.sum(jnp.where(w > 0, w * lp, 0.0))

  vg = jax.jit(jax.value_and_grad(term))
  toks = np.concatenate([PAIRS.chosen, PAIRS.rejected])
  lengths = np.concatenate([PAIRS.chosen_lengths, PAIRS.rejected_lengths])
  deltas, dgrads = [], []
  for r in range(4):
    b = r % 2
    prompt = PAIRS.prompt_ids[b][PAIRS.prompt_mask[b]]
    plen = len(prompt)
    remask = batch["loss_mask"][r, -g:]
    wts = batch["token_weight"][r, -g:]
    blocks = _response_blocks(name, cfg, plen, g)
    delta, grad = 0.0, None
    for k in np.unique(blocks[: lengths[r]]):
      end = int(np.nonzero(blocks[: lengths[r]] == k)[0][-1]) + 1
      y = toks[r, :end].copy()
      sel = (blocks[:end] == k) & remask[:end]
      y[sel] = M
      ids = np.full(n, 1, np.int32)
      ids[: plen + end] = np.concatenate([prompt, y])
      valid = np.arange(n) < plen + end
      if name == "tiny_sdar":
        bid = np.arange(n) // setup["model"].config.block_size
      else:
        bid = np.concatenate([np.zeros(plen, int), 1 + np.arange(n - plen) // cfg.block_length])
      targets = np.zeros(n, np.int32)
      targets[plen : plen + end] = toks[r, :end]
      w = np.zeros(n, np.float32)
      w[plen : plen + end] = np.where(sel, wts[:end], 0.0)
      v, gr = vg(setup["params"], ids, valid, bid, targets, w)
      v_ref, _ = vg(setup["ref_params"], ids, valid, bid, targets, w)
      delta += float(v) - float(v_ref)
      grad = gr if grad is None else jax.tree.map(jnp.add, grad, gr)
    deltas.append(delta)
    dgrads.append(grad)
  margin = np.array([deltas[0] - deltas[2], deltas[1] - deltas[3]])
  loss = np.mean(np.logaddexp(0.0, -cfg.beta * margin))
  coef = -cfg.beta / (1.0 + np.exp(cfg.beta * margin)) / 2  # d loss / d margin_i
  grads = jax.tree.map(lambda a, b, c, d: coef[0] * (a - c) + coef[1] * (b - d), *dgrads)
  return loss, margin, grads


def test_gradient_matches_naive(setup):
  batch = dict(setup["batch"])
  batch["ref_logp"] = np.asarray(setup["logp"](setup["ref_params"], batch))
  (loss, m), grads = setup["value_grad"](setup["params"], batch)
  n_loss, n_margin, n_grads = _naive(setup, batch)
  assert abs(float(loss) - math.log(2.0)) > 1e-4  # θ ≠ ref: a non-trivial check
  np.testing.assert_allclose(m["margin"], n_margin.mean(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(loss, n_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(n_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_adamw_steps_increase_margin(setup):
  batch = dict(setup["batch"])
  params = setup["params"]
  batch["ref_logp"] = np.asarray(setup["logp"](params, batch))  # π_ref = the initial policy
  tx = optax.adamw(3e-3)
  opt = tx.init(params)
  margins = []
  for _ in range(4):
    (loss, m), grads = setup["value_grad"](params, batch)
    margins.append(float(m["margin"]))
    updates, opt = tx.update(grads, opt, params)
    params = optax.apply_updates(params, updates)
  (loss, m), _ = setup["value_grad"](params, batch)
  assert margins[0] == pytest.approx(0.0, abs=1e-6)
  assert float(m["margin"]) > margins[1] > 0.0
  assert float(loss) < math.log(2.0)


def _block_counts(batch, lengths, block_length, g):
  """(masked count, scored count, weights) of every full response block of every row."""
  out = []
  for r in range(batch["input_ids"].shape[0]):
    for k in range(lengths[r] // block_length):
      sl = slice(
          batch["input_ids"].shape[1] - g + k * block_length,
          batch["input_ids"].shape[1] - g + (k + 1) * block_length,
      )
      out.append(
          (
              int((batch["input_ids"][r, sl] == M).sum()),
              int(batch["loss_mask"][r, sl].sum()),
              batch["token_weight"][r, sl],
          )
      )
  return out


def test_default_is_the_unbiased_remasked_estimator():
  """Default: every masked token scored with the 1/t weight n_b / m_b (one token per step); the
  old default (weight 1) estimated ~0.6x the log-ratio."""
  cfg = dtrpo.DTRPOConfig(block_length=4)
  assert (cfg.estimator, cfg.block_weight) == ("remasked", "inverse_t")
  lengths = np.concatenate([PAIRS.chosen_lengths, PAIRS.rejected_lengths])
  batch = dtrpo.build_batch(PAIRS, None, jax.random.key(3), cfg, jdiff.preset("tiny_llada"))
  for m, scored, w in _block_counts(batch, lengths, 4, PAIRS.chosen.shape[1]):
    assert scored == m
    np.testing.assert_allclose(w[w > 0], 4 / m, rtol=1e-6)


def test_steps_per_block_draws_on_the_grid():
  """Blocks of 4 decoded in 2 steps: only the states decoding visits (4 or 2 masked), weighted
  T_B k_t / m_t = 4 / m_t."""
  cfg = dtrpo.DTRPOConfig(block_length=4, steps_per_block=2)
  lengths = np.concatenate([PAIRS.chosen_lengths, PAIRS.rejected_lengths])
  seen = set()
  for i in range(12):
    batch = dtrpo.build_batch(PAIRS, None, jax.random.key(i), cfg, jdiff.preset("tiny_llada"))
    for m, scored, w in _block_counts(batch, lengths, 4, PAIRS.chosen.shape[1]):
      seen.add(m)
      assert scored == m
      np.testing.assert_allclose(w[w > 0], 4 / m, rtol=1e-6)
  assert seen == {2, 4}


STEPS = ([[3, 1, 1, 2, 5, 4, 6], [1, 2, 2, 3, 4]], [[2, 2, 1, 1, 3, 3], [2, 1, 3]])


def test_newly_unmasked_replays_the_recorded_order():
  pairs = dtrpo.PreferencePairs.from_lists(
      [[5, 6, 7], [8, 9, 10, 11, 12]],
      [[20, 21, 22, 23, 24, 25, 1], [30, 31, 32, 33, 1]],
      [[40, 41, 42, 43, 44, 1], [50, 51, 1]],
      pad_id=1,
      width=7,
      chosen_steps=STEPS[0],
      rejected_steps=STEPS[1],
  )
  cfg = dtrpo.DTRPOConfig(block_length=3, estimator="newly_unmasked")
  g = 7
  for i in range(6):
    batch = dtrpo.build_batch(pairs, None, jax.random.key(i), cfg, jdiff.preset("tiny_llada"))
    for r in range(4):
      rec = np.array(STEPS[0][r] if r < 2 else STEPS[1][r - 2])
      noisy = batch["input_ids"][r, -g:][: len(rec)] == M
      scored = batch["loss_mask"][r, -g:][: len(rec)]
      w = batch["token_weight"][r, -g:][: len(rec)]
      for k in range(0, len(rec), 3):
        blk = slice(k, min(k + 3, len(rec)))
        t = rec[blk][scored[blk]]
        assert len(set(t)) == 1  # one recorded step scored per block ...
        np.testing.assert_array_equal(noisy[blk], rec[blk] >= t[0])  # ... its state
        np.testing.assert_allclose(w[blk][scored[blk]], len(set(rec[blk])), rtol=1e-6)


def test_file_pairs_get_random_orders_on_the_grid():
  cfg = dtrpo.DTRPOConfig(block_length=4, steps_per_block=2, estimator="newly_unmasked")
  lengths = np.concatenate([PAIRS.chosen_lengths, PAIRS.rejected_lengths])
  seen = set()
  for i in range(8):
    batch = dtrpo.build_batch(PAIRS, None, jax.random.key(i), cfg, jdiff.preset("tiny_llada"))
    for m, scored, w in _block_counts(batch, lengths, 4, PAIRS.chosen.shape[1]):
      seen.add(m)
      assert scored == 2
      np.testing.assert_allclose(w[w > 0], 2.0, rtol=1e-6)
  assert seen == {2, 4}


def test_shared_timesteps_and_k_draws():
  pairs = dtrpo.PreferencePairs.from_lists(
      [[5, 6], [7, 8]], [[20] * 8, [21] * 8], [[30] * 8, [31] * 8], pad_id=1
  )
  mc = jdiff.preset("tiny_llada")
  for share in (True, False):
    cfg = dtrpo.DTRPOConfig(block_length=4, timesteps_per_block=3, share_timesteps=share)
    diff = False
    for i in range(4):
      batch = dtrpo.build_batch(pairs, None, jax.random.key(i), cfg, mc)
      assert batch["input_ids"].shape[0] == 12  # [chosen x 3 | rejected x 3] of 2 pairs
      np.testing.assert_array_equal(batch["response_index"], np.tile([0, 1], 6))
      counts = (batch["input_ids"][:, -8:] == M).reshape(12, 2, 4).sum(-1)
      if share:
        np.testing.assert_array_equal(counts[:6], counts[6:])
      diff |= bool((counts[:6] != counts[6:]).any()) | bool((counts[:2] != counts[2:4]).any())
    assert diff  # independent draws differ somewhere (and the K draws differ)


def test_k_draws_average_in_the_loss():
  cfg = dtrpo.DTRPOConfig(block_length=3, timesteps_per_block=2)
  mc = jdiff.preset("tiny_llada")
  model = jdiff.DiffusionLM(mc, rngs=nnx.Rngs(0))
  batch = dtrpo.build_batch(PAIRS, None, jax.random.key(0), cfg, mc)
  logp = np.asarray(dtrpo.logprob_fn(model, batch, cfg))
  batch["ref_logp"] = logp + np.random.default_rng(0).normal(size=logp.shape)
  _, m = dtrpo.loss_fn(model, batch, cfg)
  d = np.sum(
      np.where(batch["token_weight"] > 0, batch["token_weight"] * (logp - batch["ref_logp"]), 0.0),
      -1,
  )
  d = d.reshape(2, 2, 2).mean(1)  # [side, K, pair] -> mean over K
  np.testing.assert_allclose(m["margin"], np.mean(d[0] - d[1]), rtol=1e-5)


def test_dream_matches_per_block_forwards():
  """Shifted logits in the one-forward layout equal separate ``[prompt, y_<b, ỹ_b]`` forwards
  per block, each token's logits read from the slot before it."""
  cfg = dtrpo.DTRPOConfig(block_length=3)
  mc = jdiff.preset("tiny_dream")
  model = jdiff.DiffusionLM(mc, rngs=nnx.Rngs(0))
  batch = dtrpo.build_batch(PAIRS, None, jax.random.key(1), cfg, mc)
  got = np.asarray(dtrpo.logprob_fn(model, batch, cfg))
  w = batch["token_weight"]
  got = np.sum(np.where(w > 0, w * got, 0.0), -1)
  g, n = PAIRS.chosen.shape[1], PAIRS.prompt_ids.shape[1] + PAIRS.chosen.shape[1]
  fwd = jax.jit(lambda ids, mask: model(ids[None], jnp.arange(n)[None], mask[None])[0][0])
  toks = np.concatenate([PAIRS.chosen, PAIRS.rejected])
  lengths = np.concatenate([PAIRS.chosen_lengths, PAIRS.rejected_lengths])
  for r in range(4):
    prompt = PAIRS.prompt_ids[r % 2][PAIRS.prompt_mask[r % 2]]
    plen, noisy, wr = len(prompt), batch["input_ids"][r, -g:], w[r, -g:]
    want = 0.0
    for end in range(3, lengths[r] + 3, 3):
      end = min(end, lengths[r])
      k0 = (end - 1) // 3 * 3
      ids = np.ones(n, np.int32)
      ids[: plen + end] = np.concatenate([prompt, toks[r, :k0], noisy[k0:end]])
      valid = np.arange(n) < plen + end
      bid = np.concatenate([np.zeros(plen, int), 1 + np.arange(n - plen) // 3])
      mask = valid[None] & valid[:, None] & (bid[None] <= bid[:, None]) | np.eye(n, dtype=bool)
      lp = np.asarray(jax.nn.log_softmax(fwd(ids, mask), -1))
      want += sum(wr[j] * lp[plen + j - 1, toks[r, j]] for j in range(k0, end) if wr[j] > 0)
    np.testing.assert_allclose(got[r], want, rtol=1e-5)
  # the plain shift (first token of a block read from the previous noisy slot) differs
  plain = np.asarray(
      dtrpo.model_token_logprobs(
          model,
          batch["input_ids"],
          batch["positions"],
          dtrpo.masks.block_diffusion(batch["blocks"], batch["noisy"], batch["valid"]),
          batch["targets"],
          cfg.chunk_size,
      )
  )
  assert not np.allclose(np.sum(np.where(w > 0, w * plain, 0.0), -1), got, rtol=1e-3)


def test_eos_padding_scores_the_fill():
  cfg = dtrpo.DTRPOConfig(block_length=4, padding="eos")
  batch = dtrpo.build_batch(PAIRS, None, jax.random.key(0), cfg, jdiff.preset("tiny_llada"))
  g = PAIRS.chosen.shape[1]
  assert batch["valid"][:, -g:].all()
  np.testing.assert_array_equal(batch["targets"][3, -g:], [50, 51, 1, 1, 1, 1, 1])
