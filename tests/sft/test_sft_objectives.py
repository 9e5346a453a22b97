"""SFT objectives: masking rules, hand-computed losses, Dream alignment, and loss descent.

Specs: docs/methods.md §SFT objectives, docs/formats.md §Attention layouts, docs/methods.md §SFT objectives, docs/formats.md §Families.
Most checks use a cheap fake model (embedding lookup + linear head) so the loss arithmetic is
tested without compiling a transformer; the descent tests train the tiny presets.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

import jdiff  # noqa: E402
from jdiff import sft  # noqa: E402
from jdiff.models import masks  # noqa: E402
from jdiff.sft import block_sft, llada_sft, semi_ar_sft  # noqa: E402

SDAR, LLADA, DREAM = (jdiff.preset(n) for n in ("tiny_sdar", "tiny_llada", "tiny_dream"))
MASK = SDAR.mask_token_id


class FakeModel:
  """``backbone(tokens, positions, mask) -> (table[tokens] + pos[positions], None)``; linear head.
  Records the attention masks it is given."""

  def __init__(self, config, seed=0, dim=16):
    self.config = config
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    self.tok = jax.random.normal(k1, (config.vocab_size, dim))
    self.pos = jax.random.normal(k2, (64, dim))
    self.w = jax.random.normal(k3, (dim, config.vocab_size))
    self.masks = []

  def backbone(self, tokens, positions, mask):
    self.masks.append(np.asarray(mask))
    return self.tok[tokens] + self.pos[positions], None

  def head_weight(self):
    return self.w

  def log_probs(self, tokens, positions):
    """float64 log-softmax of the raw (unshifted) logits, by hand."""
    h = (
        np.asarray(self.tok, np.float64)[np.asarray(tokens)]
        + np.asarray(self.pos, np.float64)[np.asarray(positions)]
    )
    z = h @ np.asarray(self.w, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


class Oracle:
  """Logits = 30 · one-hot of the right target (identity head). ``clean``: the targets; for the
  x_t ⊕ x_0 layout they are read from the x_0 half. ``lead``: hidden i holds target i+lead."""

  def __init__(self, config, clean=None, lead=0):
    self.config, self.clean, self.lead = config, clean, lead

  def backbone(self, tokens, positions, mask):
    clean = self.clean
    if clean is None:
      n = tokens.shape[1] // 2
      clean = jnp.concatenate([tokens[:, n:], tokens[:, n:]], axis=1)
    clean = jnp.roll(clean, -self.lead, axis=1)
    return 30.0 * jax.nn.one_hot(clean, self.config.vocab_size), None

  def head_weight(self):
    return jnp.eye(self.config.vocab_size)


def toy_rows(cfg, n=16, length=12, seed=0, **kw):
  """Fixed mapping prompt -> response: prompts of 3-6 tokens, response from the first three."""
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(10, 40, size=rng.integers(3, 7))) for _ in range(n)]
  responses = [[(x * 3) % 50 + 50 for x in p[:3]] for p in prompts]
  return sft.make_rows(
      prompts, responses, length, pad_id=cfg.pad_token_id, eos_id=cfg.eos_token_id, **kw
  )


def small_rows(cfg, **kw):
  """Two rows whose prompts end inside a block of 4 (lengths 3 and 6)."""
  return sft.make_rows(
      [[10, 11, 12], [20, 21, 22, 23, 24, 25]],
      [[60, 61, 62, 63, 64], [70, 71]],
      12,
      pad_id=cfg.pad_token_id,
      eos_id=cfg.eos_token_id,
      **kw,
  )


def test_registry_and_rows():
  assert sft.names() == ["sft_block", "sft_llada", "sft_semi_ar", "trace_sft"]
  assert sft.get("sft_block")[:2] == (block_sft.build_batch, block_sft.loss_fn)
  with pytest.raises(KeyError):
    sft.get("nope")
  r = small_rows(SDAR)
  np.testing.assert_array_equal(r["tokens"][0, :9], [10, 11, 12, 60, 61, 62, 63, 64, 1])
  assert r["prompt_mask"][0].sum() == 3 and r["loss_mask"][0].sum() == 9  # EOS padding in loss
  lp = small_rows(SDAR, prompt_width=6, pad_in_loss=False)
  np.testing.assert_array_equal(lp["positions"][0, 3:7], [0, 1, 2, 3])
  assert lp["loss_mask"][0].sum() == 6 and not lp["loss_mask"][1, 9:].any()


def test_block_batch_masking_rules():
  rows = small_rows(SDAR)
  b = block_sft.build_batch(rows, jax.random.key(0), SDAR)
  n = rows["tokens"].shape[1]
  prompt, loss = rows["prompt_mask"], rows["loss_mask"]
  both, x_0, masked, t = (np.asarray(b[k]) for k in ("tokens", "targets", "masked", "t"))
  x_t = both[:, :n]
  np.testing.assert_array_equal(both[:, n:], rows["tokens"])  # the clean copy
  np.testing.assert_array_equal(x_0, rows["tokens"])
  np.testing.assert_array_equal(b["positions"][:, :n], b["positions"][:, n:])
  assert not masked[prompt].any() and not (masked & ~loss).any()
  np.testing.assert_array_equal(x_t == MASK, masked)
  np.testing.assert_array_equal(x_t[~masked], x_0[~masked])
  blk = rows["positions"] // 4
  for i in range(len(t)):  # one t per (row, block); blocks differ
    per_block = [np.unique(t[i][blk[i] == k]) for k in np.unique(blk[i])]
    assert all(len(u) == 1 for u in per_block)
    assert len(np.unique(np.concatenate(per_block))) == len(per_block)
  assert (t >= 1e-3).all() and (t <= 1.0).all()
  np.testing.assert_allclose(b["weight"][masked], 1.0 / t[masked], rtol=1e-6)
  assert (np.asarray(b["weight"])[~masked] == 0).all()
  # The prompt's partial last block is shared with the first response tokens (absolute blocks).
  first = np.argmax(loss, axis=1)
  assert any(blk[i, first[i] - 1] == blk[i, first[i]] for i in range(len(first)))
  # x_t ⊕ x_0 attention is exactly the masks-module layout.
  m = np.asarray(block_sft.attention_mask(b))
  np.testing.assert_array_equal(m, masks.xt_x0(rows["positions"], 4, prompt | loss))
  # A noisy query sees clean keys of strictly earlier blocks only, noisy keys of its own block.
  i, q = 0, first[0]
  for key in range(n):
    assert m[i, q, n + key] == (blk[i, key] < blk[i, q])
    assert m[i, q, key] == (blk[i, key] == blk[i, q])
  # >= 1 masked per row even when t is tiny; per-sequence t is constant over the row.
  tiny = block_sft.build_batch(rows, jax.random.key(1), SDAR, t_min=1e-4, t_max=1e-4)
  assert (np.asarray(tiny["masked"]).sum(1) >= 1).all()
  seq = block_sft.build_batch(rows, jax.random.key(2), SDAR, t_per="sequence")
  assert (np.ptp(np.asarray(seq["t"]), axis=1) == 0).all()
  frac = []
  for seed in range(20):  # TraceRL semi-AR noise: per-position p ~ U(0.1, 0.9), no 1/t
    uni = block_sft.build_batch(
        rows, jax.random.key(seed), SDAR, noise="uniform_0.1_0.9", weighting="none"
    )
    ut, um = np.asarray(uni["t"]), np.asarray(uni["masked"])
    assert (ut >= 0.1).all() and (ut <= 0.9).all() and len(np.unique(ut[0])) == n
    assert (np.asarray(uni["weight"])[um] == 1).all() and not um[prompt].any()
    frac.append(um.sum() / loss.sum())
  assert 0.4 < np.mean(frac) < 0.6


def test_block_loss_matches_hand_computation():
  rows = small_rows(SDAR)
  b = block_sft.build_batch(rows, jax.random.key(7), SDAR)
  model = FakeModel(SDAR)
  loss, metrics = block_sft.loss_fn(model, b)
  n = 12
  valid = rows["prompt_mask"] | rows["loss_mask"]
  np.testing.assert_array_equal(model.masks[-1], masks.xt_x0(rows["positions"], 4, valid))
  lp = model.log_probs(b["tokens"], b["positions"])[:, :n]
  nll = -np.take_along_axis(lp, rows["tokens"][..., None], -1)[..., 0]
  masked, t = np.asarray(b["masked"]), np.asarray(b["t"], np.float64)
  n_resp = rows["loss_mask"].sum(1)  # 9 and 6 response tokens (EOS padding included)
  np.testing.assert_array_equal(n_resp, [9, 6])
  expected = np.mean([(nll[i] * masked[i] / t[i]).sum() / n_resp[i] for i in range(2)])
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["nll"]), nll[masked].mean(), rtol=1e-5)
  # weighting="none": plain NLL over masked tokens / #response tokens.
  bn = block_sft.build_batch(rows, jax.random.key(7), SDAR, weighting="none")
  expected_none = np.mean([(nll[i] * masked[i]).sum() / n_resp[i] for i in range(2)])
  np.testing.assert_allclose(float(block_sft.loss_fn(model, bn)[0]), expected_none, rtol=1e-5)


def test_llada_rules_and_hand_computation():
  rows = small_rows(LLADA, prompt_width=6)  # row 0 has 3 left-padding tokens
  for seed in range(50):  # a fixed key with a few masked tokens
    b = llada_sft.build_batch(rows, jax.random.key(seed), LLADA)
    if np.asarray(b["masked"]).sum() >= 3:
      break
  masked, p = np.asarray(b["masked"]), np.asarray(b["t"], np.float64)
  assert not masked[rows["prompt_mask"]].any() and not masked[:, :6].any()
  assert (np.ptp(p, axis=1) == 0).all() and (p >= 1e-3).all()
  np.testing.assert_array_equal(np.asarray(b["tokens"]) == LLADA.mask_token_id, masked)
  np.testing.assert_array_equal(b["norm"], [6, 6])  # L - #prompt - #left padding
  model = FakeModel(LLADA, seed=1)
  loss, _ = llada_sft.loss_fn(model, b)
  np.testing.assert_array_equal(
      model.masks[-1], masks.bidirectional(rows["prompt_mask"] | rows["loss_mask"])
  )
  lp = model.log_probs(b["tokens"], b["positions"])
  nll = -np.take_along_axis(lp, rows["tokens"][..., None], -1)[..., 0]
  expected = (nll * masked / p).sum() / (2 * 12 - 6 - 6)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  # Over many keys the masked fraction tracks p, EOS padding included.
  frac, ps = [], []
  for seed in range(60):
    bk = llada_sft.build_batch(rows, jax.random.key(seed), LLADA)
    frac.append(np.asarray(bk["masked"]).sum() / rows["loss_mask"].sum())
    ps.append(float(bk["t"][0, 0]))
  np.testing.assert_allclose(np.mean(frac), np.mean(ps), atol=0.06)


def test_semi_ar_rows_and_dream_shift():
  rows = small_rows(DREAM)
  b = semi_ar_sft.build_batch(rows, jax.random.key(5), DREAM, block_size=4)
  assert b["tokens"].shape == (2 * 3, 12)
  x, x0, masked, blk, k = (np.asarray(b[n]) for n in ("tokens", "targets", "masked", "block", "k"))
  np.testing.assert_array_equal(k, [0, 1, 2, 0, 1, 2])
  loss_rows = np.repeat(rows["loss_mask"], 3, axis=0)
  prompt_rows = np.repeat(rows["prompt_mask"], 3, axis=0)
  for r in range(6):
    assert (x[r][prompt_rows[r]] == x0[r][prompt_rows[r]]).all()
    past, cur, fut = (blk[r] >= 0) & (blk[r] < k[r]), blk[r] == k[r], blk[r] > k[r]
    assert (x[r][past] == x0[r][past]).all() and (x[r][fut] == MASK).all()
    np.testing.assert_array_equal(masked[r], cur & (x[r] == MASK))
    assert (masked[r].sum() >= 1) == cur.any()  # >= 1 masked whenever block k exists
  assert masked.sum(1).tolist()[5] == 0  # sample 1 has 6 response tokens: no block 2
  np.testing.assert_array_equal(blk[0][3:12], [0, 0, 0, 0, 1, 1, 1, 1, 2])
  assert not (loss_rows & (blk < 0)).any()

  model = FakeModel(DREAM, seed=2)
  loss, _ = semi_ar_sft.loss_fn(model, b)
  lp = model.log_probs(b["tokens"], b["positions"])

  def by_hand(lp):
    nll = -np.take_along_axis(lp, x0[..., None], -1)[..., 0]
    return np.mean([nll[r][masked[r]].mean() for r in range(6) if masked[r].any()])

  shifted = np.concatenate([lp[:, :1], lp[:, :-1]], axis=1)  # target j read from logits j-1
  np.testing.assert_allclose(float(loss), by_hand(shifted), rtol=1e-5)
  assert abs(by_hand(lp) - by_hand(shifted)) > 0.1  # the wrong alignment differs
  # Same batch, LLaDA config: no shift.
  model.config = LLADA
  np.testing.assert_allclose(float(semi_ar_sft.loss_fn(model, b)[0]), by_hand(lp), rtol=1e-5)


def test_oracle_logits_give_zero_loss():
  rows = small_rows(SDAR)
  key = jax.random.key(11)
  bb = block_sft.build_batch(rows, key, SDAR)
  assert float(block_sft.loss_fn(Oracle(SDAR), bb)[0]) < 1e-6
  bl = llada_sft.build_batch(rows, key, LLADA)
  assert float(llada_sft.loss_fn(Oracle(LLADA, bl["targets"]), bl)[0]) < 1e-6
  bs = semi_ar_sft.build_batch(rows, key, DREAM, block_size=4)
  good = float(semi_ar_sft.loss_fn(Oracle(DREAM, bs["targets"], lead=1), bs)[0])
  wrong = float(semi_ar_sft.loss_fn(Oracle(DREAM, bs["targets"], lead=0), bs)[0])
  assert good < 1e-6 and wrong > 5.0


# XLA:CPU compile time dominates these tests on 2 cores; a lower backend optimisation level
# halves it and does not change what is computed.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CASES = [
    ("tiny_sdar", "sft_block", {}),
    ("tiny_llada", "sft_llada", {}),
    ("tiny_dream", "sft_semi_ar", {"block_size": 4}),
]


@pytest.mark.parametrize("preset,name,opts", CASES, ids=[c[1] for c in CASES])
def test_loss_falls(preset, name, opts):
  cfg = jdiff.preset(preset)
  rows = toy_rows(cfg)
  obj = sft.get(name)
  graphdef, params, rest = nnx.split(jdiff.DiffusionLM(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
  tx = optax.adamw(3e-3)
  eval_batch = obj.build_batch(rows, jax.random.key(123), cfg, **opts)

  def loss_of(p, batch):
    return obj.loss_fn(nnx.merge(graphdef, p, rest), batch)[0]

  @jax.jit
  def step(p, opt, key, evaluate):
    """One Adam step on a fresh batch; with ``evaluate`` the loss of the fixed eval batch (one
    compiled program for both: the caller drops that call's update)."""
    fresh = obj.build_batch(rows, key, cfg, **opts)
    batch = jax.tree.map(lambda e, f: jnp.where(evaluate, e, f), eval_batch, fresh)
    loss, grads = jax.value_and_grad(loss_of)(p, batch)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  opt = tx.init(params)
  step = step.lower(params, opt, jax.random.key(0), True).compile(FAST_COMPILE)
  first = float(step(params, opt, jax.random.key(0), True)[2])
  for k in jax.random.split(jax.random.key(0), 40):
    params, opt, _ = step(params, opt, k, False)
  last = float(step(params, opt, jax.random.key(0), True)[2])
  print(f"{name}: eval loss {first:.3f} -> {last:.3f}")
  assert np.isfinite([first, last]).all()
  assert last < 0.6 * first
