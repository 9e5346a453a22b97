"""Fast-dLLM options of the LLaDA sampler: prefix / dual KV cache and threshold decoding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdiff
from jdiff.models.kv_cache import KVCache
from jdiff.sampling import common, llada, row_shards

CONFIDENT_SCALE = 30.0  # sharpens the tiny model's softmax so many positions pass 0.9


@pytest.fixture(scope="module")
def confident_model(llada_ckpt):
  m = jdiff.from_pretrained(llada_ckpt.path, dtype="float32")
  m.lm_head[...] = m.lm_head[...] * CONFIDENT_SCALE
  return m


def _config(**kw):
  base = dict(gen_length=16, block_length=8, steps=8)
  base.update(kw)
  return llada.LLaDASamplerConfig(**base)


def _sample(m, prompts, cfg, seed=11):
  ids, mask = prompts
  return jax.device_get(llada.sample(m, ids, mask, jax.random.key(seed), cfg))


@functools.partial(jax.jit, static_argnums=3)
def _gumbel(k, row, col, vocab):
  return jax.random.gumbel(
      jax.random.fold_in(jax.random.fold_in(k, row), col), (vocab,), jnp.float32
  )


@functools.partial(jax.jit, static_argnums=0)
def _refresh(graphdef, state, tokens, positions, mask, cache, store):
  return nnx.merge(graphdef, state)(tokens, positions, mask, cache, store=store)


@functools.partial(jax.jit, static_argnums=0)
def _cached(graphdef, state, tokens, positions, mask, cache):
  return nnx.merge(graphdef, state)(tokens, positions, mask, cache)[0]


def reference(model, ids, pmask, key, cfg):
  """The approximate Fast-dLLM algorithm (spec §6) in plain Python on the model's KV cache.

  At a block's first step: full forward storing every real token's K/V, keeping positions
  before the block (prefix) or all but the block (dual). Later steps: the suffix
  ``[block_start, end)`` (prefix) or the block alone (dual) against that cache. Commit: the
  top-n of the uniform schedule, or threshold decoding (≥ threshold, at least the top-1).
  Draws follow the sampler's scheme (fold_in(key, step) -> per row, per position; the step
  is the global one for the plans, the row's own count with a threshold).
  """
  mc = model.config
  mask_id = mc.mask_token_id
  b, p = ids.shape
  g, bk = cfg.gen_length, cfg.block_length
  n_tot = p + g
  x = np.concatenate([ids, np.full((b, g), mask_id, np.int32)], axis=1)
  valid = np.concatenate([pmask, np.ones((b, g), bool)], axis=1)
  pos = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
  attn = valid[:, None, :] & valid[:, :, None]
  attn |= np.eye(n_tot, dtype=bool)[None] & ~valid[:, :, None]
  per_block = cfg.steps // cfg.num_blocks
  step_map = np.zeros((b, g), np.int32)
  logprobs = np.zeros((b, g), np.float32)
  nsteps = np.zeros(b, np.int32)
  s = 0
  for blk in range(cfg.num_blocks):
    bs, be = blk * bk, (blk + 1) * bk
    counts = common.transfer_schedule(bk, per_block)
    i = 0
    while np.any(x[:, p + bs : p + be] == mask_id) and (cfg.threshold is not None or i < per_block):
      if cfg.cache == "none":
        logits = np.asarray(jdiff.forward(model, x, attention_mask=attn, positions=pos))
        block_logits = logits[:, p + bs : p + be]
      elif i == 0:
        cache = KVCache.init(mc, b, n_tot)
        logits, cache = _refresh(*nnx.split(model), x, pos, attn, cache, valid)
        block_logits = np.asarray(logits)[:, p + bs : p + be]
        slots = np.arange(n_tot)[None, :]
        start = pos[:, p + bs][:, None]
        keep = slots < start if cfg.cache == "prefix" else (slots < start) | (slots >= start + bk)
        cache = cache.keep(jnp.asarray(keep))
      else:
        end = n_tot if cfg.cache == "prefix" else p + be
        q = end - (p + bs)
        logits = _cached(
            *nnx.split(model),
            x[:, p + bs : end],
            pos[:, p + bs : end],
            np.ones((b, q, q), bool),
            cache,
        )
        block_logits = np.asarray(logits)[:, :bk]
      logp = np.asarray(jax.nn.log_softmax(jnp.asarray(block_logits), axis=-1))  # raw logits
      block_logits = block_logits.copy()
      block_logits[..., mask_id] = -np.inf  # the sampler never proposes the mask token
      probs = np.asarray(jax.nn.softmax(jnp.asarray(block_logits), axis=-1))
      for r in range(b):
        # Threshold decoding draws from the row's own step count, plans from the global step.
        kg, _ = jax.random.split(
            jax.random.fold_in(key, s if cfg.threshold is None else int(nsteps[r]))
        )
        cands, confs, cols = {}, [], []
        for j in range(bs, be):
          if x[r, p + j] != mask_id:
            continue
          row = block_logits[r, j - bs]
          if cfg.temperature == 0:
            tok = int(np.argmax(row))
          else:
            tok = int(
                np.argmax(
                    row + np.float32(cfg.temperature) * np.asarray(_gumbel(kg, r, j, row.shape[-1]))
                )
            )
          cands[j] = tok
          confs.append(float(probs[r, j - bs, tok]))
          cols.append(j)
        order = sorted(range(len(cols)), key=lambda t: (-confs[t], cols[t]))
        if cfg.threshold is None:
          chosen = order[: counts[i]]
        else:
          chosen = order[:1] + [t for t in order[1:] if confs[t] >= cfg.threshold]
        if chosen:
          nsteps[r] += 1
        for t in chosen:
          j = cols[t]
          x[r, p + j] = cands[j]
          step_map[r, j] = nsteps[r]
          logprobs[r, j] = logp[r, j - bs, cands[j]]
      s += 1
      i += 1
  return x[:, p:], step_map, logprobs, nsteps


def _logprob_tol(confident: bool):
  """Tolerances for log-probs of one problem computed in another order or shape: float32
  noise is relative to the logits, which the confident model scales by CONFIDENT_SCALE (its
  log-probs are small where it is confident, so the noise is not relative to them)."""
  return dict(rtol=1e-5, atol=1e-6 * (CONFIDENT_SCALE if confident else 1.0))


def _check(tr, ref, confident=False):
  comp, step_map, logprobs, nsteps = ref
  np.testing.assert_array_equal(tr.raw_tokens, comp)
  np.testing.assert_array_equal(tr.raw_step_map, step_map)
  np.testing.assert_array_equal(tr.num_steps, nsteps)
  np.testing.assert_allclose(tr.raw_logprobs, logprobs, **_logprob_tol(confident))


@pytest.fixture(scope="module")
def one_step_exact(llada_model, llada_prompts):
  return _sample(llada_model, llada_prompts, _config(block_length=4, steps=4, temperature=1.0))


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_block_first_steps_equal_exact(cache, llada_model, llada_prompts, one_step_exact):
  """With one step per block every step is a block's first step, whose logits come from the
  cache-refresh forward: the cached sampler must reproduce the exact sampler exactly."""
  tr = _sample(
      llada_model, llada_prompts, _config(block_length=4, steps=4, temperature=1.0, cache=cache)
  )
  np.testing.assert_array_equal(tr.raw_tokens, one_step_exact.raw_tokens)
  np.testing.assert_array_equal(tr.raw_step_map, one_step_exact.raw_step_map)
  np.testing.assert_allclose(tr.raw_logprobs, one_step_exact.raw_logprobs, rtol=1e-5, atol=1e-6)


CASES = {
    "prefix_greedy": (dict(cache="prefix", record_states=True), False),
    "dual_sampled": (dict(cache="dual", temperature=1.0), False),
    "threshold": (dict(threshold=0.9, steps=16), True),
    "threshold_dual": (dict(threshold=0.9, steps=16, cache="dual", temperature=0.7), True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name, llada_model, confident_model, llada_prompts):
  kw, confident = CASES[name]
  m = confident_model if confident else llada_model
  cfg = _config(**kw)
  tr = _sample(m, llada_prompts, cfg)
  ids, mask = llada_prompts
  _check(tr, reference(m, ids, mask, jax.random.key(11), cfg), confident)
  assert not np.any(tr.raw_tokens == m.config.mask_token_id)
  if cfg.threshold is not None:
    # At least one token per step (step maps are dense 1..num_steps), and fewer steps than the
    # exact sampler, which commits one token per step here (steps = gen_length).
    for r in range(tr.raw_step_map.shape[0]):
      assert set(tr.raw_step_map[r].tolist()) == set(range(1, int(tr.num_steps[r]) + 1))
    assert np.all(tr.num_steps < cfg.steps)
  if cfg.record_states:
    # Tokens committed at a block's first step carry exact log-probs (full forward there).
    mask_id = m.config.mask_token_id
    valid = np.concatenate([mask, np.ones((len(ids), cfg.gen_length), bool)], axis=1)
    pos = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    for k in (1, cfg.steps // cfg.num_blocks + 1):
      before = tr.states[k - 2] if k > 1 else np.full_like(tr.raw_tokens, mask_id)
      logits = jdiff.forward(
          m, np.concatenate([ids, before], axis=1), attention_mask=valid, positions=pos
      )
      lp = np.asarray(common.token_logprob(logits[:, ids.shape[1] :], jnp.asarray(tr.raw_tokens)))
      now = tr.raw_step_map == k
      np.testing.assert_allclose(tr.raw_logprobs[now], lp[now], **_logprob_tol(confident))


def test_fast_config_validation(llada_model, llada_prompts):
  ids, mask = llada_prompts
  bad = [
      (dict(cache="prefix", schedule="ass", steps=4), "schedule"),
      (dict(threshold=0.0), "threshold"),
      (dict(threshold=0.5, remasking="random"), "remasking"),
      (dict(cache="dual", cfg_scale=1.0), "cfg_scale"),
  ]
  for kw, field in bad:
    with pytest.raises(ValueError, match=f"LLaDASamplerConfig.{field}="):
      llada.sample(llada_model, ids, mask, jax.random.key(0), _config(**kw))
  assert dataclasses.asdict(_config())["cache"] == "none"  # off by default
  assert _config().threshold is None


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (fake) devices")
@pytest.mark.parametrize(
    "kw, confident",
    [
        (dict(threshold=0.9, steps=16, cache="dual", temperature=0.7, record_states=True), True),
        (dict(temperature=1.0, remasking="random", eoser=True), False),
    ],
)
def test_row_shards_match_single_device(
    kw, confident, llada_ckpt, llada_model, confident_model, llada_prompts
):
  """On a mesh whose axes all split the batch (one row per shard here) each shard runs its
  own loop: with threshold decoding a row then no longer waits for the others at block ends,
  and its draws follow its own steps, so everything equals the one-device run."""
  m = confident_model if confident else llada_model
  cfg = _config(**kw)
  single = _sample(m, llada_prompts, cfg)
  ids, mask = llada_prompts
  if cfg.threshold is not None:  # rows finish the first block at different steps: they wait
    firsts = [int(single.raw_step_map[r, : cfg.block_length].max()) for r in range(len(ids))]
    assert len(set(firsts)) > 1
  mesh = jdiff.sharding.make_mesh((2, 2, 1))
  sharded_model = jdiff.sharding.shard_model(
      nnx.clone(m), mesh, rules=jdiff.sharding.SAMPLING_RULES
  )
  with jax.set_mesh(mesh):
    traj = llada.sample(sharded_model, ids, mask, jax.random.key(11), cfg)
    graphdef, state = nnx.split(sharded_model)
    row_axes = llada.row_shard_axes(len(ids), state)
    with jdiff.sharding.use_rules(jdiff.sharding.SAMPLING_RULES):
      hlo = llada._sample_jit.lower(
          graphdef,
          state,
          jnp.asarray(ids),
          jnp.asarray(mask),
          jax.random.key(11),
          config=cfg,
          row_axes=row_axes,
      ).as_text()
  assert row_axes == ("data", "fsdp") and "manual_computation" in hlo
  traj = jax.device_get(traj)
  for field in ("tokens", "step_map", "num_steps", "lengths", "raw_tokens", "raw_step_map"):
    np.testing.assert_array_equal(getattr(traj, field), getattr(single, field), err_msg=field)
  if cfg.record_states:
    np.testing.assert_array_equal(traj.states, single.states)
  np.testing.assert_allclose(traj.raw_logprobs, single.raw_logprobs, **_logprob_tol(confident))


@pytest.mark.parametrize(
    "kw, confident, rows_per_loop",
    [
        (dict(threshold=0.9, steps=16, cache="dual", temperature=0.7, record_states=True), True, 1),
        (dict(threshold=0.9, steps=16, cache="prefix"), True, 2),
        (dict(temperature=1.0, remasking="random", eoser=True, record_states=True), False, 2),
    ],
)
def test_rows_per_loop_matches_one_loop(
    kw, confident, rows_per_loop, llada_model, confident_model, llada_prompts
):
  """Groups of rows decoded one loop after another give the one-loop run's tokens, step
  maps, log-probs and states: each group keeps its rows' global indices (their keys), and a
  threshold row never depended on the rows it waited for. The program holds the loop over
  groups around the decoding loop."""
  m = confident_model if confident else llada_model
  cfg = _config(**kw)
  one = _sample(m, llada_prompts, cfg)
  grouped_cfg = dataclasses.replace(cfg, rows_per_loop=rows_per_loop)
  grouped = _sample(m, llada_prompts, grouped_cfg)
  for field in ("tokens", "step_map", "num_steps", "lengths", "raw_tokens", "raw_step_map"):
    np.testing.assert_array_equal(getattr(grouped, field), getattr(one, field), err_msg=field)
  if cfg.record_states:
    np.testing.assert_array_equal(grouped.states, one.states)
  np.testing.assert_allclose(grouped.raw_logprobs, one.raw_logprobs, **_logprob_tol(confident))
  assert _while_loops(m, llada_prompts, grouped_cfg) > _while_loops(m, llada_prompts, cfg)


def _while_loops(m, prompts, cfg):
  """How many while loops the sampler's lowered program holds."""
  graphdef, state = nnx.split(m)
  ids, mask = prompts
  with jdiff.sharding.use_rules(jdiff.sharding.SAMPLING_RULES):
    return (
        llada._sample_jit.lower(
            graphdef, state, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(11), config=cfg
        )
        .as_text()
        .count("while(")
    )


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (fake) devices")
def test_rows_per_loop_on_row_shards(confident_model, llada_prompts):
  """On a 2-way data mesh each shard decodes its 2 rows one loop per row: same outputs."""
  cfg = _config(threshold=0.9, steps=16, cache="dual", temperature=0.7)
  single = _sample(confident_model, llada_prompts, cfg)
  mesh = jdiff.sharding.make_mesh((2, 1, 1))
  sharded = jdiff.sharding.shard_model(
      nnx.clone(confident_model), mesh, rules=jdiff.sharding.SAMPLING_RULES
  )
  ids, mask = llada_prompts
  with jax.set_mesh(mesh):
    traj = jax.device_get(
        llada.sample(
            sharded, ids, mask, jax.random.key(11), dataclasses.replace(cfg, rows_per_loop=1)
        )
    )
    assert row_shards.shard_count(("data",)) == 2
    with pytest.raises(
        ValueError,
        match=r"rows_per_loop=3: must divide each of the 2 data " r"shards' 8 rows \(or be >= it\)",
    ):
      row_shards.check_rows_per_loop(
          3, 16, row_shards.shard_count(("data",)), "LLaDASamplerConfig.rows_per_loop"
      )
  for field in ("tokens", "step_map", "num_steps"):
    np.testing.assert_array_equal(getattr(traj, field), getattr(single, field), err_msg=field)
  np.testing.assert_allclose(traj.raw_logprobs, single.raw_logprobs, **_logprob_tol(True))


@pytest.mark.parametrize(
    "value, match",
    [
        (3, r"LLaDASamplerConfig.rows_per_loop=3: must divide the batch of 4 rows"),
        (0, r"LLaDASamplerConfig.rows_per_loop=0: must be None or a positive int"),
        (1.5, r"LLaDASamplerConfig.rows_per_loop=1.5: must be None or a positive int"),
    ],
)
def test_rows_per_loop_errors(value, match, llada_model, llada_prompts):
  ids, mask = llada_prompts
  with pytest.raises(ValueError, match=match):
    llada.sample(llada_model, ids, mask, jax.random.key(0), _config(rows_per_loop=value))


def test_rows_per_loop_beyond_the_batch_is_one_loop(llada_model, llada_prompts):
  """A group size >= the batch (a dataset's smaller last batch) runs the one-loop program."""
  one = _sample(llada_model, llada_prompts, _config())
  wide = _sample(llada_model, llada_prompts, _config(rows_per_loop=8))
  np.testing.assert_array_equal(wide.raw_tokens, one.raw_tokens)
  np.testing.assert_array_equal(wide.raw_step_map, one.raw_step_map)
  assert _while_loops(llada_model, llada_prompts, _config(rows_per_loop=8)) == _while_loops(
      llada_model, llada_prompts, _config()
  )
