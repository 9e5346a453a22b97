"""Block-diffusion sampler (SDAR/TraDo) against a plain-Python loop of jdiff.forward calls."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

import jdiff  # noqa: E402
from jdiff.sampling import block  # noqa: E402
from jdiff.sampling.common import (
    filter_logits,
    left_pad,
    sample_categorical,  # noqa: E402
    transfer_schedule,
)

Cfg = block.BlockSamplerConfig
# Lengths 3 (< L: no prefill, prompt tail in block 0), 5, 8 (a multiple of L), 13; bucket 16.
PROMPTS = [
    [5, 6, 7, 8, 9],
    [10, 11, 12, 13, 14, 15, 16, 17],
    [20, 21, 22],
    [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42],
]
OTHER_PROMPTS = [[7] * 16, [9, 8], list(range(50, 61)), [4]]  # same bucket, other lengths
G = 10  # not a multiple of L: the last block of every row is cut by gen_length
REF_LEN = 32  # reference canvases are padded to one length (one jdiff.forward compile)
GREEDY = dict(temperature=0.0)
SAMPLED = dict(temperature=0.3, top_p=0.95)
# (strategy, steps, knobs for greedy, knobs for sampled): thresholds chosen so that the
# dynamic and entropy rules take different counts at different steps on the tiny model.
STRATEGY_CASES = [
    ("sequential", 4, {}, {}),
    ("low_confidence_static", 2, {}, {}),
    ("low_confidence_dynamic", 2, dict(threshold=0.03), dict(threshold=0.2)),
    ("entropy_bounded", 2, dict(eb_threshold=10.0), dict(eb_threshold=6.0)),
]
EOS_SCALE = 1.5  # with greedy top_k=1 decoding, two rows stop early (one mid-block)


@pytest.fixture(scope="module")
def ckpt(hf_checkpoints):
  return hf_checkpoints("sdar")


@pytest.fixture(scope="module")
def model(ckpt, jdiff_models):
  return jdiff_models(ckpt)


@pytest.fixture(scope="module")
def eos_model(model):
  """A copy whose EOS column is scaled up, so EOS wins now and then."""
  m = nnx.clone(model)
  w = np.array(m.lm_head[...])
  w[:, m.config.eos_token_id] *= EOS_SCALE
  m.lm_head[...] = jnp.asarray(w)
  return m


def make_cfg(strategy="low_confidence_dynamic", steps=2, **kw):
  kw = dict(dict(gen_length=G, record_states=True), **kw)
  return Cfg(strategy=strategy, steps_per_block=steps, **kw)


def run(model, cfg, prompts=PROMPTS, key=0):
  traj = block.sample(model, prompts, None, jax.random.key(key), cfg, bucket=16)
  return jax.tree.map(np.asarray, traj)


# ----------------------------------------------------------------------------- reference
def _choose(strategy, eligible, conf, probs, n, cfg):
  """The four unmasking rules on one window, in numpy."""
  idx = np.flatnonzero(eligible)
  n = min(int(n), len(idx))
  by_conf = idx[np.argsort(-conf[idx], kind="stable")]
  if strategy == "sequential":
    pick = idx[:n]
  elif strategy == "low_confidence_static":
    pick = by_conf[:n]
  elif strategy == "low_confidence_dynamic":
    above = idx[conf[idx] > cfg.threshold]
    pick = above if len(above) >= n else by_conf[:n]
  else:
    p = probs[idx].astype(np.float64)
    ent = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    order = np.argsort(ent, kind="stable")
    count = int(np.sum(np.cumsum(ent[order]) <= cfg.eb_threshold))
    pick = idx[order[: max(count, 1)]]
  out = np.zeros(eligible.shape, bool)
  out[pick] = True
  return out


def _draw(key, logits, cfg, mask_id):
  """One window's draw: the sampler's per-row scheme, via common.sample_categorical."""
  logits = jnp.asarray(logits).at[:, mask_id].set(-jnp.inf)
  ids, conf = sample_categorical(key, logits, cfg.temperature, cfg.top_k, cfg.top_p)
  dist = (
      logits
      if cfg.temperature == 0
      else filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p)
  )
  return np.asarray(ids), np.asarray(conf), np.asarray(jax.nn.softmax(dist, axis=-1))


def reference_row(model, prompt, row_key, cfg):
  """Block diffusion for one row, one full block-causal forward of the canvas per step."""
  mc = model.config
  L, S, mask_id = cfg.block_length, cfg.steps_per_block, mc.mask_token_id
  P, n = len(prompt), len(prompt) + cfg.gen_length
  canvas = np.full(REF_LEN, mc.pad_token_id, np.int32)
  canvas[:P], canvas[P:n] = prompt, mask_id
  pos = jnp.arange(REF_LEN)[None]
  attn = jdiff.masks.block_causal(pos, L, pos < n)
  step_map, logp = np.zeros(REF_LEN, np.int32), np.zeros(REF_LEN, np.float32)
  schedule = transfer_schedule(L, S)
  t, start, end = 0, (P // L) * L, n
  while True:
    stop = min(start + L, n)
    live = np.arange(start, start + L)
    in_gen = (live >= P) & (live < stop)
    k = 0
    while np.any((canvas[start : start + L] == mask_id) & in_gen):
      logits = np.asarray(jdiff.forward(model, canvas[None], attention_mask=attn))[0]
      win = logits[start : start + L]
      ids, conf, probs = _draw(jax.random.fold_in(row_key, t), win, cfg, mask_id)
      eligible = (canvas[start : start + L] == mask_id) & in_gen
      chosen = _choose(cfg.strategy, eligible, conf, probs, schedule[min(k, S - 1)], cfg)
      t, k = t + 1, k + 1
      for i in np.flatnonzero(chosen):
        canvas[start + i], step_map[start + i] = ids[i], t
        logp[start + i] = jax.nn.log_softmax(win[i])[ids[i]]
    stops = [p for p in range(max(start, P), stop) if canvas[p] in cfg.stop_ids]
    if stops:
      end = stops[0] + 1
      break
    if stop >= n:
      break
    start += L
  keep = np.arange(P, n) < end
  return dict(
      tokens=np.where(keep, canvas[P:n], mc.pad_token_id),
      step_map=np.where(keep, step_map[P:n], 0),
      logprobs=np.where(keep, logp[P:n], 0),
      lengths=end - P,
      num_steps=t,
  )


def reference(model, cfg, prompts=PROMPTS, key=0):
  cfg = cfg.validate(model.config)
  rows = [
      reference_row(model, p, jax.random.fold_in(jax.random.key(key), b), cfg)
      for b, p in enumerate(prompts)
  ]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def assert_matches_reference(traj, ref):
  np.testing.assert_array_equal(traj.tokens, ref["tokens"])
  np.testing.assert_array_equal(traj.step_map, ref["step_map"])
  np.testing.assert_array_equal(traj.lengths, ref["lengths"])
  np.testing.assert_array_equal(traj.num_steps, ref["num_steps"])
  np.testing.assert_allclose(traj.logprobs, ref["logprobs"], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("strategy,steps,greedy_kw,sampled_kw", STRATEGY_CASES)
def test_matches_reference_loop(model, strategy, steps, greedy_kw, sampled_kw):
  for kw in (dict(GREEDY, **greedy_kw), dict(SAMPLED, **sampled_kw)):
    cfg = make_cfg(strategy, steps, **kw)
    traj = run(model, cfg)
    assert_matches_reference(traj, reference(model, cfg))
    assert traj.tokens.shape == (len(PROMPTS), G)
    assert not np.any(traj.tokens == model.config.mask_token_id)


def test_strategies_differ_and_rules_bite(model):
  """Guards the reference test against vacuity: the rules pick different sets."""
  maps = {
      s: run(model, make_cfg(s, st, **dict(GREEDY, **g))).step_map for s, st, g, _ in STRATEGY_CASES
  }
  assert len({m.tobytes() for m in maps.values()}) == len(maps)
  # Dynamic sometimes takes more than n_k = 2 (fewer steps than static), entropy sometimes
  # takes more than one token per step.
  dyn, static, ent = (
      maps[s] for s in ("low_confidence_dynamic", "low_confidence_static", "entropy_bounded")
  )
  assert np.all(dyn.max(1) <= static.max(1)) and np.any(dyn.max(1) < static.max(1))
  assert np.any(ent.max(1) < np.sum(ent > 0, axis=1))


@pytest.mark.parametrize("strategy", ["low_confidence_dynamic", "entropy_bounded"])
def test_cached_equals_uncached(model, strategy):
  kw = dict(SAMPLED, **dict((c[0], c[3]) for c in STRATEGY_CASES)[strategy])
  cached = run(model, make_cfg(strategy, **kw), key=3)
  uncached = run(model, make_cfg(strategy, use_cache=False, **kw), key=3)
  np.testing.assert_array_equal(cached.tokens, uncached.tokens)
  np.testing.assert_array_equal(cached.step_map, uncached.step_map)
  np.testing.assert_array_equal(cached.states, uncached.states)
  np.testing.assert_allclose(cached.logprobs, uncached.logprobs, rtol=1e-5, atol=1e-6)


def test_trajectory_consistency(model):
  cfg = make_cfg(temperature=1.0, threshold=0.05)
  traj = run(model, cfg, key=7)
  assert np.all(traj.lengths == G)  # no EOS drawn with this key (the check needs full rows)
  mask_id, L = model.config.mask_token_id, model.config.block_size
  for b, prompt in enumerate(PROMPTS):
    P, smap, toks, n = len(prompt), traj.step_map[b], traj.tokens[b], traj.num_steps[b]
    assert traj.lengths[b] == G and np.all(smap >= 1)
    # Blocks at absolute positions: each block's steps come strictly after the previous one's.
    blk = (P + np.arange(G)) // L
    firsts = [smap[blk == k].min() for k in np.unique(blk)]
    lasts = [smap[blk == k].max() for k in np.unique(blk)]
    assert all(lasts[i] < firsts[i + 1] for i in range(len(firsts) - 1))
    assert np.all(np.diff(np.maximum.accumulate(smap)) >= 0) and smap.max() == n
    # Replaying the step map from all-mask reproduces every recorded state.
    for t in range(1, n + 1):
      np.testing.assert_array_equal(traj.states[t - 1, b], np.where(smap <= t, toks, mask_id))
    np.testing.assert_array_equal(
        traj.states[n:, b], np.broadcast_to(toks, (len(traj.states) - n, G))
    )
    # Each log-prob is log_softmax of a full forward of the state just before its step.
    canv = np.full((len(traj.states), REF_LEN), model.config.pad_token_id, np.int32)
    canv[:, :P] = prompt
    for t in range(1, n + 1):
      canv[t - 1, P : P + G] = np.where(smap < t, toks, mask_id)
    pos = jnp.broadcast_to(jnp.arange(REF_LEN), canv.shape)
    attn = jdiff.masks.block_causal(pos, L, pos < P + G)
    logp = jax.nn.log_softmax(jdiff.forward(model, canv, attention_mask=attn), axis=-1)
    want = np.asarray(logp)[smap - 1, P + np.arange(G), toks]
    np.testing.assert_allclose(traj.logprobs[b], want, rtol=1e-5, atol=1e-6)


def test_eos_stopping(eos_model):
  m = eos_model
  eos, pad = m.config.eos_token_id, m.config.pad_token_id
  # top_k=1: every confidence is exactly 1.0, so the order is the leftmost-first tie rule.
  cfg = make_cfg("low_confidence_static", top_k=1)
  traj = run(m, cfg, key=1)
  assert_matches_reference(traj, reference(m, cfg, key=1))
  lengths = traj.lengths
  assert np.any(lengths < G) and np.any(lengths > 1)
  for b in range(len(PROMPTS)):
    n = lengths[b]
    toks, smap = traj.tokens[b], traj.step_map[b]
    assert not np.any(toks[: n - 1] == eos)  # the first stop ends the completion
    if n < G:
      assert toks[n - 1] == eos and np.all(toks[n:] == pad)
      assert np.all(smap[n:] == 0) and np.all(traj.logprobs[b, n:] == 0)
    assert np.all(smap[:n] >= 1)
    # A finished row stops changing: no steps beyond the reference's, its state stays final.
    np.testing.assert_array_equal(
        traj.states[traj.num_steps[b] :, b],
        np.broadcast_to(toks, traj.states[traj.num_steps[b] :, b].shape),
    )
  # At least one row found its EOS in mid-block and dropped a later, already decoded token.
  dropped = [
      b
      for b in range(len(PROMPTS))
      if lengths[b] < G
      and np.any(traj.states[traj.num_steps[b] - 1, b, lengths[b] :] != m.config.mask_token_id)
  ]
  assert dropped


def test_compiles_once_per_bucket(model, compile_events):
  cfg = make_cfg(temperature=0.0)
  run(model, cfg)  # compiles (or reuses) the (batch, bucket, settings) program
  size = block._generate_jit._cache_size()
  compile_events.clear()
  listed = run(model, cfg, prompts=OTHER_PROMPTS, key=5)  # other prompts, same bucket
  ids, mask, _ = left_pad(OTHER_PROMPTS, model.config.pad_token_id, bucket=16)
  padded = block.sample(model, ids, mask, jax.random.key(5), cfg)
  run(
      model,
      make_cfg("entropy_bounded", temperature=0.5, top_p=0.8, eb_threshold=3.0),
      prompts=OTHER_PROMPTS,
  )  # traced settings differ: still no compile
  assert block._generate_jit._cache_size() == size
  assert compile_events == []
  np.testing.assert_array_equal(padded.tokens, listed.tokens)  # array + mask input path


@pytest.mark.parametrize(
    "field,kw",
    [
        ("steps_per_block", dict(steps_per_block=0)),
        ("steps_per_block", dict(steps_per_block=5)),
        ("block_length", dict(block_length=8)),
        ("strategy", dict(strategy="random")),
        ("threshold", dict(threshold=0.0)),
        ("threshold", dict(threshold=1.5)),
        ("eb_threshold", dict(eb_threshold=-1.0)),
        ("temperature", dict(temperature=-0.1)),
        ("top_p", dict(top_p=0.0)),
        ("top_k", dict(top_k=-1)),
        ("gen_length", dict(gen_length=0)),
        ("stop_ids", dict(stop_ids=(10_000,))),
    ],
)
def test_validation_before_compiling(model, field, kw, compile_events):
  size = block._generate_jit._cache_size()
  with pytest.raises(ValueError, match=field):
    block.sample(model, PROMPTS, None, jax.random.key(0), dataclasses.replace(make_cfg(), **kw))
  assert compile_events == [] and block._generate_jit._cache_size() == size


def test_rejects_non_block_model():
  with pytest.raises(ValueError, match="the block sampler needs an sdar/trado model, not 'llada'"):
    Cfg().validate(jdiff.preset("tiny_llada"))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_mesh_matches_single_device(model):
  cfg = make_cfg(**SAMPLED, threshold=0.2)
  single = run(model, cfg, key=2)
  sharded_model = nnx.clone(model)
  mesh = jdiff.sharding.make_mesh((2, 2, 2))
  jdiff.sharding.shard_model(sharded_model, mesh, rules=jdiff.sharding.SAMPLING_RULES)
  with jax.set_mesh(mesh):
    traj = block.sample(sharded_model, PROMPTS, None, jax.random.key(2), cfg, bucket=16)
  assert traj.tokens.sharding.spec[0] == ("data", "fsdp")
  traj = jax.tree.map(np.asarray, traj)
  np.testing.assert_array_equal(traj.tokens, single.tokens)
  np.testing.assert_array_equal(traj.step_map, single.step_map)
  np.testing.assert_allclose(traj.logprobs, single.logprobs, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (fake) devices")
@pytest.mark.parametrize("greedy", [True, False])
def test_row_shards_match_single_device(eos_model, greedy):
  """A mesh whose axes all split the batch (one row per shard here) runs one loop per shard
  (a shard_map in the program) and gives the one-device result. With EOS, rows stop at
  different steps, so the shards' loops run different trip counts."""
  knobs = dict(top_k=1) if greedy else dict(SAMPLED, threshold=0.2)
  cfg = make_cfg(**knobs, stop_ids=(eos_model.config.eos_token_id,))
  single = run(eos_model, cfg, key=3)
  assert len(set(single.num_steps.tolist())) > 1  # the shards' loops differ in length
  sharded_model = nnx.clone(eos_model)
  mesh = jdiff.sharding.make_mesh((2, 2, 1))
  jdiff.sharding.shard_model(sharded_model, mesh, rules=jdiff.sharding.SAMPLING_RULES)
  with jax.set_mesh(mesh):
    traj = block.sample(sharded_model, PROMPTS, None, jax.random.key(3), cfg, bucket=16)
    graphdef, state = nnx.split(sharded_model)
    ids, pmask, _ = left_pad(PROMPTS, 0, bucket=16)
    static, knobs_ = block._split(cfg.validate(sharded_model.config))
    row_axes = block.row_shard_axes(len(PROMPTS), state)
    hlo = block._generate_jit.lower(
        graphdef,
        state,
        block._place_batch(ids),
        block._place_batch(pmask),
        jax.random.key(3),
        knobs_,
        static,
        row_axes,
    ).as_text()
  assert row_axes == ("data", "fsdp") and "manual_computation" in hlo
  assert traj.tokens.sharding.spec[0] == ("data", "fsdp")
  traj = jax.tree.map(np.asarray, traj)
  for field in ("tokens", "step_map", "num_steps", "lengths", "states", "raw_tokens"):
    np.testing.assert_array_equal(getattr(traj, field), getattr(single, field), err_msg=field)
  np.testing.assert_allclose(traj.logprobs, single.logprobs, rtol=1e-5, atol=1e-6)


def test_commit_stores_no_slot_past_gen_length(model):
  """A row committing its last block, cut by gen_length, stores only the completion's slots:
  slots past P + gen_length stay invalid keys of the cache (one ``_step`` on a built carry;
  prompt 6 tokens, gen_length 5, L = 4: the last block [8, 12) ends the completion at 11)."""
  from jdiff.models.kv_cache import KVCache

  mc = model.config
  cfg = make_cfg(gen_length=5)
  static, knobs = block._split(cfg.validate(mc))
  plen = jnp.array([6], jnp.int32)
  canvas = jnp.array([[5, 6, 7, 8, 9, 10, 20, 21, 22, 23, 24, 1]], jnp.int32)  # no mask left
  cache = KVCache.init(mc, 1, 12)
  cache = cache.replace(valid=jnp.arange(12)[None] < 8)  # blocks 0 and 1 already stored
  zero = jnp.zeros((1,), jnp.int32)
  carry = block._Carry(
      canvas=canvas,
      step_map=jnp.zeros((1, 12), jnp.int32),
      logprobs=jnp.zeros((1, 12), jnp.float32),
      cache=cache,
      block_start=jnp.array([8]),
      step_in_block=zero + 2,
      num_steps=zero + 3,
      end=plen + 5,
      done=jnp.zeros((1,), bool),
      states=None,
      iteration=jnp.zeros((), jnp.int32),
  )
  keys = jax.random.split(jax.random.key(0), 1)
  out = block._step(model, static, knobs, keys, plen, carry)
  assert bool(out.done[0])  # the block committed and the row finished
  np.testing.assert_array_equal(np.asarray(out.cache.valid[0]), np.arange(12) < 11)
  k = np.asarray(out.cache.k)
  assert np.abs(k[..., 8:11]).max() > 0 and np.all(k[..., 11] == 0)
