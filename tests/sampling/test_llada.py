"""LLaDA sampler (+ EOSER, ASS, CFG) against a plain-Python loop of jdiff.forward calls."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.sampling import common, llada, schedules

Cfg = llada.LLaDASamplerConfig
EOS_SCALE = 5.0  # makes EOS the argmax at most masked positions of the tiny model


@pytest.fixture(scope="module")
def eos_model(llada_ckpt):
  """A copy whose EOS logit is scaled up, so EOS competes (EOSER, truncation tests)."""
  m = jdiff.from_pretrained(llada_ckpt.path, dtype="float32")
  w = np.array(m.lm_head[...])
  w[:, m.config.eos_token_id] *= EOS_SCALE
  m.lm_head[...] = jnp.asarray(w)
  return m


@functools.partial(jax.jit, static_argnums=3)
def _gumbel(k, row, col, vocab):
  return jax.random.gumbel(
      jax.random.fold_in(jax.random.fold_in(k, row), col), (vocab,), jnp.float32
  )


@jax.jit
def _uniform(k, row, col):
  return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(k, row), col), (), jnp.float32)


def reference(model, ids, pmask, key, cfg):
  """LLaDA's loop (spec §1, §3.1, §3.2) in plain Python, one full forward per step.

  Random draws follow the sampler's documented scheme: ``kg, kr = split(fold_in(key, s))``,
  position (b, j) uses ``fold_in(fold_in(kg | kr, b), j)``.
  Returns (completion [B, G], step_map, logprobs, num_steps) before EOS truncation.
  """
  mc = model.config
  mask_id, eos = mc.mask_token_id, mc.eos_token_id
  b, p = ids.shape
  g = cfg.gen_length
  x = np.concatenate([ids, np.full((b, g), mask_id, np.int32)], axis=1)
  valid = np.concatenate([pmask, np.ones((b, g), bool)], axis=1)
  if cfg.padding_blind_positions:
    pos = np.broadcast_to(np.arange(p + g), (b, p + g))
  else:
    pos = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  attn = valid[:, None, :] & valid[:, :, None]
  attn |= np.eye(p + g, dtype=bool)[None] & ~valid[:, :, None]  # pad queries see themselves
  plan = cfg.plan()
  gam = None
  if cfg.gamma_name:
    gam = schedules.gamma_schedule(
        cfg.gamma_name, plan.num_steps, cfg.eos_min_gamma, cfg.eos_max_gamma
    )
  step_map = np.zeros((b, g), np.int32)
  logprobs = np.zeros((b, g), np.float32)
  nsteps = np.zeros(b, np.int32)
  for s in range(plan.num_steps):
    bs, be, n = int(plan.block_start[s]), int(plan.block_end[s]), int(plan.counts[s])
    cond = np.asarray(jdiff.forward(model, x, attention_mask=attn, positions=pos))[:, p:]
    guided = cond
    if cfg.cfg_scale > 0:
      un_x = x.copy()
      un_x[:, :p][pmask] = mask_id
      un = np.asarray(jdiff.forward(model, un_x, attention_mask=attn, positions=pos))[:, p:]
      guided = un + (cfg.cfg_scale + 1) * (cond - un)
    guided = guided.copy()
    guided[..., mask_id] = -np.inf  # the sampler never proposes the mask token
    if cfg.logits_eos_inf:
      guided[..., eos] = -np.inf
    kg, kr = jax.random.split(jax.random.fold_in(key, s))
    probs = np.asarray(jax.nn.softmax(jnp.asarray(guided), axis=-1))
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(cond), axis=-1))
    for r in range(b):
      cands, confs, pos_list = {}, [], []
      for j in range(bs, be):
        if x[r, p + j] != mask_id:
          continue
        if cfg.temperature == 0:
          tok = int(np.argmax(guided[r, j]))
        else:
          gum = np.asarray(_gumbel(kg, r, j, guided.shape[-1]))
          tok = int(np.argmax(guided[r, j].astype(np.float32) + np.float32(cfg.temperature) * gum))
        if cfg.remasking == "random":
          c = np.float32(_uniform(kr, r, j))
        else:
          c = probs[r, j, tok]
        if gam is not None and tok == eos:
          c = np.float32(c * gam[s])
        cands[j] = tok
        confs.append(float(c))
        pos_list.append(j)
      order = sorted(range(len(pos_list)), key=lambda i: (-confs[i], pos_list[i]))[:n]
      if order:
        nsteps[r] += 1
      for i in order:
        j = pos_list[i]
        x[r, p + j] = cands[j]
        step_map[r, j] = nsteps[r]
        logprobs[r, j] = logp[r, j, cands[j]]
  return x[:, p:], step_map, logprobs, nsteps


CASES = {
    "greedy": (dict(), False),
    "sampled_states": (dict(temperature=1.0, record_states=True), False),
    "eoser_linear": (dict(temperature=0.5, eoser=True), True),
    "ass_eoser": (dict(schedule="ass", steps=4, eoser=True, temperature=1.0), True),
    "ass_one_block": (dict(schedule="ass", steps=4, block_length=16, record_states=True), True),
    "cfg_eos_inf": (dict(cfg_scale=1.0, logits_eos_inf=True), True),
    # 16 steps per 8-token block: the last 8 steps of each block commit nothing.
    "random_blind_sparse": (
        dict(remasking="random", temperature=1.0, padding_blind_positions=True, steps=32),
        False,
    ),
}


def _config(**kw):
  base = dict(gen_length=16, block_length=8, steps=8)
  base.update(kw)
  return Cfg(**base)


@pytest.fixture(scope="module")
def runs(llada_model, eos_model, llada_prompts):
  """Sampler output per case (each compiled once, shared by several tests)."""
  ids, mask = llada_prompts
  out = {}

  def get(name):
    if name not in out:
      kw, biased = CASES[name]
      m = eos_model if biased else llada_model
      cfg = _config(**kw)
      key = jax.random.key(7)
      out[name] = (m, cfg, key, jax.device_get(llada.sample(m, ids, mask, key, cfg)))
    return out[name]

  return get


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, runs, llada_prompts):
  ids, mask = llada_prompts
  m, cfg, key, tr = runs(name)
  comp, step_map, logprobs, nsteps = reference(m, ids, mask, key, cfg)
  np.testing.assert_array_equal(tr.raw_tokens, comp)
  np.testing.assert_array_equal(tr.raw_step_map, step_map)
  np.testing.assert_array_equal(tr.num_steps, nsteps)
  np.testing.assert_allclose(tr.raw_logprobs, logprobs, rtol=1e-5, atol=1e-6)
  assert not np.any(comp == m.config.mask_token_id)


def test_eoser_delays_eos(runs, llada_prompts):
  """EOSER scales EOS confidence by γ(0) = 0.01 at the first step: EOS candidates lose the
  ranking there, while without EOSER the EOS-biased model commits some EOS at once."""
  ids, mask = llada_prompts
  m, cfg, key, with_eoser = runs("eoser_linear")
  plain_tokens, plain_steps, _, _ = reference(
      m, ids, mask, key, dataclasses.replace(cfg, eoser=False)
  )
  eos = m.config.eos_token_id
  assert np.sum((with_eoser.raw_step_map == 1) & (with_eoser.raw_tokens == eos)) == 0
  assert np.sum((plain_steps == 1) & (plain_tokens == eos)) > 0


def test_truncation_after_eos(runs):
  m, cfg, _, tr = runs("ass_eoser")
  eos, pad = m.config.eos_token_id, m.config.pad_token_id
  for r in range(tr.tokens.shape[0]):
    raw = tr.raw_tokens[r]
    hits = np.flatnonzero(raw == eos)
    length = hits[0] + 1 if len(hits) else len(raw)
    assert tr.lengths[r] == length
    np.testing.assert_array_equal(tr.tokens[r, :length], raw[:length])
    assert np.all(tr.tokens[r, length:] == pad) and np.all(tr.step_map[r, length:] == 0)
    assert np.all(tr.logprobs[r, length:] == 0)
    np.testing.assert_array_equal(tr.step_map[r, :length], tr.raw_step_map[r, :length])
  assert np.any(tr.lengths < cfg.gen_length)  # the biased model does emit EOS


def _canvas(ids, comp):
  return np.concatenate([ids, comp], axis=1)


def _fwd(model, ids, mask, comp):
  g = comp.shape[1]
  valid = np.concatenate([mask, np.ones((ids.shape[0], g), bool)], axis=1)
  pos = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
  return np.asarray(jdiff.forward(model, _canvas(ids, comp), attention_mask=valid, positions=pos))


@pytest.mark.parametrize("name", ["sampled_states", "ass_one_block"])
def test_replay_and_logprobs(name, runs, llada_prompts):
  """Replaying the step map rebuilds every recorded state; the recorded log-probs equal a
  fresh forward's log-softmax at the pre-step state (the trajectory-consistency contract)."""
  ids, mask = llada_prompts
  m, cfg, _, tr = runs(name)
  mask_id = m.config.mask_token_id
  b, g = tr.raw_tokens.shape
  for k in range(1, int(tr.num_steps.max()) + 1):
    before = np.where((tr.raw_step_map > 0) & (tr.raw_step_map < k), tr.raw_tokens, mask_id)
    after = np.where((tr.raw_step_map > 0) & (tr.raw_step_map <= k), tr.raw_tokens, mask_id)
    np.testing.assert_array_equal(tr.states[k - 1], after)
    logp = jax.nn.log_softmax(_fwd(m, ids, mask, before)[:, ids.shape[1] :], axis=-1)
    lp = np.take_along_axis(np.asarray(logp), tr.raw_tokens[..., None], -1)[..., 0]
    now = tr.raw_step_map == k
    assert now.any(axis=-1).all()  # every row commits at each of its steps
    np.testing.assert_allclose(tr.raw_logprobs[now], lp[now], rtol=1e-5, atol=1e-6)
    if cfg.temperature == 0:  # greedy: the replayed state's argmax is the committed token
      np.testing.assert_array_equal(np.asarray(logp).argmax(-1)[now], tr.raw_tokens[now])
  np.testing.assert_array_equal(tr.states[-1], tr.raw_tokens)


def test_left_padding_matches_single_rows(runs, llada_model, llada_prompts):
  """A left-padded row (6 pads) decodes as its prompt alone, unpadded (positions count real
  tokens, pads are invisible keys)."""
  _, cfg, key, tr = runs("greedy")
  ids, mask = llada_prompts
  ids = ids[3:4, mask[3]]  # the row's prompt without its pads
  alone, _, _, _ = reference(llada_model, ids, np.ones(ids.shape, bool), key, cfg)
  np.testing.assert_array_equal(alone[0], tr.raw_tokens[3])


def test_compiles_once_per_bucket(runs, llada_model):
  _, cfg, key, _ = runs("greedy")
  before = llada._sample_jit._cache_size()
  ids, mask, _ = common.left_pad(
      [[9, 9, 9, 9], [30], [31, 32], [33, 34, 35, 36, 37, 38]], 1, length=8
  )  # the prompts fixture's bucket
  llada.sample(llada_model, ids, mask, jax.random.key(3), cfg)
  assert llada._sample_jit._cache_size() == before


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(gen_length=12, block_length=8), "gen_length"),
        (dict(steps=7), "steps"),
        (dict(schedule="ass", steps=5), "steps"),
        (dict(schedule="ass", steps=4, block_length=2), "block_length"),
        (dict(remasking="top_p"), "remasking"),
        (dict(schedule="cosine"), "schedule"),
        (dict(eoser="cubic"), "eoser"),
        (dict(cache="full"), "cache"),
        (dict(threshold=1.5), "threshold"),
    ],
)
def test_validation_before_compile(kw, field, llada_model, llada_prompts):
  ids, mask = llada_prompts
  before = llada._sample_jit._cache_size()
  with pytest.raises(ValueError, match=f"LLaDASamplerConfig.{field}="):
    llada.sample(llada_model, ids, mask, jax.random.key(0), _config(**kw))
  assert llada._sample_jit._cache_size() == before


def test_mesh_matches_single_device(llada_ckpt, runs, llada_prompts):
  from jdiff import sharding

  ids, mask = llada_prompts
  _, cfg, key, tr = runs("sampled_states")
  mesh = sharding.make_mesh((2, 2, 2))
  m = sharding.shard_model(
      jdiff.from_pretrained(llada_ckpt.path, dtype="float32"), mesh, rules=sharding.SAMPLING_RULES
  )
  with jax.set_mesh(mesh):
    sharded = jax.device_get(llada.sample(m, ids, mask, key, cfg))
  np.testing.assert_array_equal(sharded.tokens, tr.tokens)
  np.testing.assert_array_equal(sharded.step_map, tr.step_map)
  np.testing.assert_allclose(sharded.logprobs, tr.logprobs, rtol=1e-5, atol=1e-6)
