"""dTRPO (d1_cjgrpo_dtrpo.md §4): re-masked final states in one x_t ⊕ x_0 row per response,
the DPO loss on the policy-vs-reference log-ratio of the re-masked tokens."""

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
    rejected=[[40, 41, 42, 43, 44, 1], [50, 51, 1]], pad_id=1, width=7)
CFGS = {"tiny_sdar": dtrpo.DTRPOConfig(),
        "tiny_llada": dtrpo.DTRPOConfig(block_length=3, block_weight="inverse_t")}


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
  value_grad = jax.jit(jax.value_and_grad(lambda p, b: dtrpo.loss_fn(merge(p), b, cfg),
                                          has_aux=True))
  batch = dtrpo.build_batch(PAIRS, None, jax.random.key(0), cfg, model.config)
  return dict(name=name, cfg=cfg, model=model, params=params, graphdef=graphdef, rest=rest,
              ref_params=nnx.split(ref, nnx.Param, ...)[1], logp=logp, value_grad=value_grad,
              batch=batch)


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
    np.testing.assert_array_equal(batch["input_ids"][r, -g:][real],
                                  np.where(remask, M, toks[r])[real])
    np.testing.assert_array_equal(batch["targets"][r, -g:][real], toks[r][real])
    assert batch["noisy"][r, -g:].all()
    # the clean copy of the response is untouched, and no mask id sits outside the noisy copy
    n = batch["input_ids"].shape[1]
    off = mc.block_size if name == "tiny_sdar" else 0  # the noisy window's prompt-tail slots
    np.testing.assert_array_equal(batch["input_ids"][r, n - 2 * g - off:n - g - off][real],
                                  toks[r][real])
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
  other = [dtrpo.build_batch(PAIRS, None, jax.random.key(i), cfg, mc)["loss_mask"]
           for i in (1, 2)]
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
    for k in np.unique(blocks[:lengths[r]]):
      end = int(np.nonzero(blocks[:lengths[r]] == k)[0][-1]) + 1
      y = toks[r, :end].copy()
      sel = (blocks[:end] == k) & remask[:end]
      y[sel] = M
      ids = np.full(n, 1, np.int32)
      ids[:plen + end] = np.concatenate([prompt, y])
      valid = np.arange(n) < plen + end
      if name == "tiny_sdar":
        bid = np.arange(n) // setup["model"].config.block_size
      else:
        bid = np.concatenate([np.zeros(plen, int), 1 + np.arange(n - plen) // cfg.block_length])
      targets = np.zeros(n, np.int32)
      targets[plen:plen + end] = toks[r, :end]
      w = np.zeros(n, np.float32)
      w[plen:plen + end] = np.where(sel, wts[:end], 0.0)
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


def test_rejects_shifted_logits():
  with pytest.raises(ValueError, match="shifted-logit"):
    dtrpo.build_batch(PAIRS, None, jax.random.key(0), dtrpo.DTRPOConfig(),
                      jdiff.preset("tiny_dream"))


def test_eos_padding_scores_the_fill():
  cfg = dtrpo.DTRPOConfig(block_length=4, padding="eos")
  batch = dtrpo.build_batch(PAIRS, None, jax.random.key(0), cfg, jdiff.preset("tiny_llada"))
  g = PAIRS.chosen.shape[1]
  assert batch["valid"][:, -g:].all()
  np.testing.assert_array_equal(batch["targets"][3, -g:], [50, 51, 1, 1, 1, 1, 1])
