"""Dream sampler vs a plain-Python reference loop over full-canvas ``jdiff.forward`` calls."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdiff
import hf_fixtures
from jdiff.sampling import dream
from jdiff.sampling.common import filter_logits, left_pad

MASK, EOS = hf_fixtures.MASK_ID, hf_fixtures.EOS_ID
PROMPTS = [[5, 17, 33, 8, 99, 41], [7, 12], [60, 61, 62, 63, 64, 65, 66, 67], [120]]
# Every sampler test records states, so tests with equal settings share one compilation.
BASE = dream.DreamSamplerConfig(gen_length=16, steps=8, record_states=True)


@pytest.fixture(scope="module")
def ckpt(hf_checkpoints):
  return hf_checkpoints("dream")


@pytest.fixture(scope="module")
def model(ckpt, jdiff_models):
  return jdiff_models(ckpt)


def batch(prompts=PROMPTS, length=8):
  ids, mask, _ = left_pad(prompts, EOS, length=length)
  return ids, mask


def canvas_inputs(mask, g):
  valid = np.concatenate([mask, np.ones((mask.shape[0], g), bool)], 1)
  return valid, np.where(valid, np.cumsum(valid, 1) - 1, 1)  # Dream's tok_idx, pads at 1


@functools.partial(jax.jit, static_argnames=("temp", "top_k", "top_p"))
def draws(key, step, logits, temp, top_k, top_p):
  """The sampler's random draws for one step, row by row: row r's keys are
  ``split(fold_in(fold_in(key, r), step))``, its draws have the shapes of one row."""
  b, w, _ = logits.shape
  filt = filter_logits(logits.at[..., MASK].set(-jnp.inf), temp if temp > 0 else 1.0, top_k, top_p)
  new, uniform, gumbel = [], [], []
  for r in range(b):
    k_tok, k_pos = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, r), step))
    new.append(
        jax.random.categorical(k_tok, filt[r], axis=-1) if temp > 0 else jnp.argmax(filt[r], -1)
    )
    uniform.append(jax.random.uniform(k_pos, (w,)))
    gumbel.append(jax.random.gumbel(k_pos, (w,)))
  return (jnp.stack(new), jax.nn.softmax(filt, -1), jnp.stack(uniform), jnp.stack(gumbel))


def reference(model, ids, mask, key, cfg):
  """Dream's loop written out step by step: full forward, shift, per-row selection."""
  b, p = ids.shape
  g, w, spb = cfg.gen_length, cfg.window, cfg.steps_per_block
  stops = {EOS, *cfg.stop_ids}
  valid, pos = canvas_inputs(mask, g)
  ts = np.linspace(1.0, cfg.eps, spb + 1).astype(np.float32)
  canvas = np.full((b, g), MASK, np.int64)
  step_map, logprobs = np.zeros((b, g), np.int64), np.zeros((b, g), np.float64)
  num_steps, done = np.zeros(b, np.int64), np.zeros(b, bool)
  states = [[] for _ in range(b)]
  temp = float(cfg.temperature)
  for step in range(cfg.steps):
    if done.all():
      break
    blk, i = divmod(step, spb)
    start, last = blk * w, i == spb - 1
    ratio = np.float32(1.0) - ts[i + 1] / ts[i]
    raw = np.asarray(
        jdiff.forward(model, np.concatenate([ids, canvas], 1), attention_mask=valid, positions=pos)
    )
    shifted = np.concatenate([raw[:, :1], raw[:, :-1]], 1)
    logits = shifted[:, p + start : p + start + w]
    new, probs, uniform, gumbel = draws(key, step, logits, temp, cfg.top_k or 0, cfg.top_p or 1.0)
    new, uniform, gumbel = np.asarray(new), np.asarray(uniform), np.asarray(gumbel)
    probs = np.asarray(probs, np.float64)
    win = canvas[:, start : start + w].copy()
    mean_count = np.float32((win[~done] == MASK).sum()) / np.float32(b)  # stopped rows: none
    for r in range(b):
      masked = [j for j in range(w) if win[r, j] == MASK]
      if done[r]:
        continue
      if cfg.alg == "origin":
        chosen = [j for j in masked if last or uniform[r, j] < ratio]
      else:

        def conf(j):
          pr = probs[r, j]
          if cfg.alg == "maskgit_plus":
            c = pr[new[r, j]]
          elif cfg.alg == "topk_margin":
            top = np.sort(pr)[::-1]
            c = top[0] - top[1]
          else:
            c = np.sum(pr * np.log(pr + 1e-10))
          return c / cfg.alg_temp + gumbel[r, j] if cfg.alg_temp else c

        n = mean_count if cfg.batch_mean_count else np.float32(len(masked))
        k = len(masked) if last else int(n * ratio)
        chosen = sorted(masked, key=lambda j: (-conf(j), j))[:k]
      num_steps[r] += bool(chosen)
      for j in chosen:
        canvas[r, start + j] = new[r, j]
        step_map[r, start + j] = num_steps[r]
        lg = logits[r, j].astype(np.float64)
        logprobs[r, start + j] = lg[new[r, j]] - lg.max() - np.log(np.sum(np.exp(lg - lg.max())))
      if chosen:
        states[r].append(canvas[r].copy())
      done[r] |= not (canvas[r] == MASK).any()
      if cfg.stop_at_eos and last:
        done[r] |= any(t in stops for t in canvas[r, start : start + w])
  out = dict(
      raw_tokens=canvas.copy(),
      raw_step_map=step_map.copy(),
      lengths=np.full(b, g),
      num_steps=num_steps,
      states=states,
  )
  for r in range(b):
    hit = [j for j in range(g) if canvas[r, j] in stops]
    if hit:
      out["lengths"][r] = hit[0] + 1
      canvas[r, hit[0] + 1 :], step_map[r, hit[0] + 1 :], logprobs[r, hit[0] + 1 :] = EOS, 0, 0.0
  return dict(out, tokens=canvas, step_map=step_map, logprobs=logprobs)


def check_against_reference(model, cfg, key=None, prompts=PROMPTS):
  ids, mask = batch(prompts)
  key = jax.random.PRNGKey(7) if key is None else key
  traj = dream.sample(model, ids, mask, key, cfg)
  ref = reference(model, ids, mask, key, cfg)
  for name in ("tokens", "step_map", "lengths", "num_steps", "raw_tokens", "raw_step_map"):
    np.testing.assert_array_equal(np.asarray(getattr(traj, name)), ref[name], err_msg=name)
  np.testing.assert_allclose(np.asarray(traj.logprobs), ref["logprobs"], rtol=1e-5, atol=1e-6)
  states = np.asarray(traj.states)
  for r, row_states in enumerate(ref["states"]):
    for k, st in enumerate(row_states):
      np.testing.assert_array_equal(states[k, r], st)
    assert (states[len(row_states) :, r] == ref["raw_tokens"][r]).all()
  return traj


ALG_CASES = [
    ("origin", dict(temperature=0.0)),
    ("origin", dict(temperature=1.0)),
    ("maskgit_plus", dict(temperature=0.0)),
    ("maskgit_plus", dict(temperature=0.8, top_p=0.9)),
    ("topk_margin", dict(temperature=0.0)),
    ("topk_margin", dict(temperature=1.0, top_k=20)),
    ("entropy", dict(temperature=0.0)),
    ("entropy", dict(temperature=0.7, top_p=0.95, alg_temp=0.5)),
]
BLOCK_CASES = [
    dict(alg="entropy", temperature=0.0, block_length=4),
    dict(
        alg="topk_margin",
        temperature=1.0,
        top_k=30,
        alg_temp=1.0,
        block_length=8,
        steps=4,
        batch_mean_count=True,
    ),
    dict(alg="origin", temperature=1.0, block_length=4, steps=16),
]


@pytest.mark.parametrize(
    "alg,kw", ALG_CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(ALG_CASES)]
)
def test_matches_reference(model, alg, kw):
  traj = check_against_reference(model, dataclasses.replace(BASE, alg=alg, **kw))
  raw_step_map = np.asarray(traj.raw_step_map)
  assert raw_step_map.min() >= 1  # the whole canvas is decoded
  if alg != "origin":  # the linear schedule commits something at every step
    assert (np.asarray(traj.num_steps) == BASE.steps).all()


@pytest.mark.parametrize("kw", BLOCK_CASES)
def test_block_variant_matches_reference(model, kw):
  cfg = dataclasses.replace(BASE, **kw)
  traj = check_against_reference(model, cfg)
  sm, bl, spb = np.asarray(traj.raw_step_map), cfg.block_length, cfg.steps_per_block
  for r in range(sm.shape[0]):  # blocks are decoded left to right, one after the other
    blocks = [sm[r, k * bl : (k + 1) * bl] for k in range(cfg.gen_length // bl)]
    for a, nxt in zip(blocks, blocks[1:]):
      assert (nxt == 0).all() or a.max() < nxt[nxt > 0].min()
    if cfg.alg != "origin":
      assert all(len(set(blk[blk > 0])) in (0, spb) for blk in blocks)


def test_stop_at_eos_in_blocks(model):
  cfg = dataclasses.replace(BASE, **BLOCK_CASES[1])  # blocks of 8, batch-mean counts
  plain = np.asarray(dream.sample(model, *batch(), jax.random.PRNGKey(7), cfg).raw_tokens)
  stop = int(plain[0, 1])  # declare a token row 0 decodes in its first block a stop id
  traj = check_against_reference(model, dataclasses.replace(cfg, stop_ids=[stop]))
  tokens, lengths = np.asarray(traj.tokens), np.asarray(traj.lengths)
  raw_sm, bl = np.asarray(traj.raw_step_map), cfg.block_length
  assert lengths[0] <= 2 and (tokens[0, lengths[0] :] == EOS).all()
  assert (raw_sm[0, bl:] == 0).all() and (np.asarray(traj.raw_tokens)[0, bl:] == MASK).all()
  assert np.asarray(traj.num_steps)[0] == cfg.steps_per_block
  assert (np.asarray(traj.step_map)[0, lengths[0] :] == 0).all()
  # Another row went on, so the batch-mean count saw a stopped row (counted as no masks).
  assert (raw_sm[:, bl:] > 0).any()


@pytest.mark.parametrize("kw", [dict(ALG_CASES[7][1], alg="entropy"), BLOCK_CASES[2]])
def test_replay_and_logprobs_at_pre_step_state(model, kw):
  ids, mask = batch()
  cfg = dataclasses.replace(BASE, **kw)
  traj = dream.sample(model, ids, mask, jax.random.PRNGKey(3), cfg)
  states, sm = np.asarray(traj.states), np.asarray(traj.raw_step_map)
  final, lp = np.asarray(traj.raw_tokens), np.asarray(traj.raw_logprobs)
  b, p = ids.shape
  valid, pos = canvas_inputs(mask, cfg.gen_length)
  for k in range(1, cfg.steps + 1):
    replay = np.where((sm > 0) & (sm <= k), final, MASK)  # the step map rebuilds every state
    np.testing.assert_array_equal(replay, states[k - 1])
    pre = states[k - 2] if k > 1 else np.full_like(final, MASK)
    rows, cols = np.nonzero(sm == k)
    if rows.size == 0:
      continue
    raw = jdiff.forward(model, np.concatenate([ids, pre], 1), attention_mask=valid, positions=pos)
    logp = np.asarray(jax.nn.log_softmax(dream.shift_logits(raw), -1))[:, p:]
    np.testing.assert_allclose(
        lp[rows, cols], logp[rows, cols, final[rows, cols]], rtol=1e-5, atol=1e-6
    )
  lengths = np.asarray(traj.lengths)
  keep = np.arange(cfg.gen_length)[None] < lengths[:, None]
  np.testing.assert_array_equal(np.where(keep, final, EOS), np.asarray(traj.tokens))
  np.testing.assert_array_equal(np.where(keep, lp, 0.0), np.asarray(traj.logprobs))


def test_compiles_once_per_bucket_and_padding_is_invisible(model, compile_events):
  cfg = dataclasses.replace(BASE, alg="maskgit_plus")  # as ALG_CASES[2]
  size = dream._sample_jit._cache_size()
  wide = dream.sample(model, *batch(length=13), None, cfg)  # a bucket no other test uses
  assert dream._sample_jit._cache_size() == size + 1
  other = [[9, 9, 9], [11, 12, 13, 14, 15, 16, 17], [44], [70, 71, 72, 73, 74, 75, 76, 77, 78]]
  key = jax.random.PRNGKey(1)
  compile_events.clear()
  jax.block_until_ready(dream.sample(model, *batch(other, 13), key, cfg).tokens)
  assert compile_events == [] and dream._sample_jit._cache_size() == size + 1
  # Five more pads on every row change nothing (positions and key-padding mask).
  narrow = dream.sample(model, *batch(length=8), None, cfg)
  np.testing.assert_array_equal(np.asarray(wide.tokens), np.asarray(narrow.tokens))
  np.testing.assert_array_equal(np.asarray(wide.step_map), np.asarray(narrow.step_map))
  np.testing.assert_allclose(
      np.asarray(wide.logprobs), np.asarray(narrow.logprobs), rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(alg="greedy"), "alg"),
        (dict(steps=0), "steps"),
        (dict(gen_length=0), "gen_length"),
        (dict(block_length=5), "gen_length"),
        (dict(block_length=4, steps=6), "steps"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=-0.1), "temperature"),
        (dict(eps=1.0), "eps"),
        (dict(alg_temp=-1.0), "alg_temp"),
        (dict(block_length=0), "block_length"),
    ],
)
def test_validation_before_compilation(model, kw, field, compile_events):
  size = dream._sample_jit._cache_size()
  cfg = dataclasses.replace(BASE, **kw)
  compile_events.clear()
  with pytest.raises(ValueError, match=f"DreamSamplerConfig.{field}="):
    cfg.validate()
  with pytest.raises(ValueError, match=f"DreamSamplerConfig.{field}="):
    dream.sample(model, *batch(), None, cfg)
  assert compile_events == [] and dream._sample_jit._cache_size() == size


@pytest.mark.parametrize("kw", [dict(ALG_CASES[7][1], alg="entropy"), BLOCK_CASES[2]])
def test_rows_do_not_depend_on_the_batch(model, kw):
  """Sampled decoding: each row of a batch equals that row decoded alone (its keys fold in
  its global index), and two rows with the same prompt draw different samples."""
  cfg = dataclasses.replace(BASE, **kw)
  prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
  ids, mask = batch(prompts)
  key = jax.random.PRNGKey(5)
  graphdef, state = nnx.split(model)
  together = jax.device_get(dream.sample_state(graphdef, state, ids, mask, key, cfg))
  for r in range(len(prompts)):
    alone = jax.device_get(
        dream.sample_state(graphdef, state, ids[r : r + 1], mask[r : r + 1], key, cfg, row_offset=r)
    )
    for name in ("tokens", "step_map", "lengths", "num_steps", "raw_tokens", "raw_step_map"):
      np.testing.assert_array_equal(
          getattr(alone, name)[0], getattr(together, name)[r], err_msg=name
      )
    np.testing.assert_array_equal(alone.states[:, 0], together.states[:, r])
    # One row vs three: the forward's reductions may group differently.
    np.testing.assert_allclose(
        alone.raw_logprobs[0], together.raw_logprobs[r], rtol=1e-5, atol=1e-6
    )
  assert (together.raw_tokens[0] != together.raw_tokens[2]).any()


def test_rejects_right_padded_prompts(model):
  ids, mask = batch()
  with pytest.raises(ValueError, match="left-padded"):
    dream.sample(model, ids[:, ::-1], mask[:, ::-1], None, BASE)


def test_mesh_matches_single_device(ckpt, model):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  cfg = dataclasses.replace(BASE, **BLOCK_CASES[1])
  ids, mask = batch()
  key = jax.random.PRNGKey(11)
  single = dream.sample(model, ids, mask, key, cfg)
  mesh = jdiff.sharding.make_mesh((2, 2, 2))
  sharded = jdiff.sharding.shard_model(
      jdiff.from_pretrained(ckpt.path, dtype="float32"), mesh, rules=jdiff.sharding.SAMPLING_RULES
  )
  assert any(len(x.sharding.device_set) > 1 for x in sharded.backbone.layers.arrays().values())
  with jax.set_mesh(mesh):
    multi = dream.sample(sharded, ids, mask, key, cfg)
    jax.block_until_ready(multi.tokens)
  for name in ("tokens", "step_map", "lengths", "num_steps", "states"):
    np.testing.assert_array_equal(
        np.asarray(getattr(multi, name)), np.asarray(getattr(single, name)), err_msg=name
    )
  np.testing.assert_allclose(
      np.asarray(multi.logprobs), np.asarray(single.logprobs), rtol=1e-5, atol=1e-6
  )
