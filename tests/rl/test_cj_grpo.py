"""CJ-GRPO (d1_cjgrpo_dtrpo.md §3.3): rows from the recorded states, the per-step loss, and
the two step-batching modes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdiff
from jdiff.rl import cj_grpo
from jdiff.rl.method import methods
from jdiff.sampling.common import Trajectory
from jdiff.train.update import _split_micro

M = 3  # tiny presets' mask id


@pytest.fixture(scope="module")
def ref_model():
  return jdiff.DiffusionLM(jdiff.preset("tiny_llada"), rngs=nnx.Rngs(1))


def _trajectory():
  """B=2, P=3 (row 1 left-padded), G=6, S_max=5. Row 0 takes 4 steps, row 1 takes 2; step 4
  is empty in the whole batch."""
  fills = [[[0, 1], [2], [3, 4], [5]], [[2, 5], [0, 1, 3, 4]]]
  final = np.array([[10, 11, 12, 13, 14, 1], [20, 21, 22, 23, 24, 1]], np.int32)
  s_max, g = 5, 6
  states = np.full((s_max, 2, g), M, np.int32)
  for b, steps in enumerate(fills):
    canvas = np.full(g, M, np.int32)
    for s in range(s_max):
      if s < len(steps):
        canvas[steps[s]] = final[b, steps[s]]
      states[s, b] = canvas
  step_map = np.zeros((2, g), np.int32)
  for b, steps in enumerate(fills):
    for s, js in enumerate(steps):
      step_map[b, js] = s + 1
  return (
      Trajectory(
          prompt_ids=np.array([[5, 6, 7], [1, 8, 9]], np.int32),
          prompt_mask=np.array([[1, 1, 1], [0, 1, 1]], bool),
          tokens=final,
          step_map=step_map,
          logprobs=np.zeros((2, g), np.float32),
          lengths=np.array([6, 6], np.int32),
          num_steps=np.array([4, 2], np.int32),
          states=states,
      ),
      fills,
  )


ADV = np.array([1.5, -0.7], np.float32)


CFG = cj_grpo.CJGRPOConfig()


@pytest.fixture(scope="module")
def fns(llada, ref_model):
  """Jitted functions of ``(params, batch)`` shared by the tests (one compile per shape)."""
  graphdef, params, rest = nnx.split(llada, nnx.Param, ...)
  ref_params = nnx.split(ref_model, nnx.Param, ...)[1]
  merge = lambda p: nnx.merge(graphdef, p, rest)
  logp = jax.jit(lambda p, b: cj_grpo.logprob_fn(merge(p), b, CFG))
  value_grad = jax.jit(
      jax.value_and_grad(lambda p, b: cj_grpo.loss_fn(merge(p), b, CFG), has_aux=True)
  )
  return dict(params=params, ref_params=ref_params, logp=logp, value_grad=value_grad)


def _with_old_ref(fns, batch, ref="ref_params", noise=0.0):
  logp = np.asarray(fns["logp"](fns["params"], batch))
  rng = np.random.default_rng(0)
  batch = dict(batch)
  batch["old_logp"] = (logp + noise * rng.standard_normal(logp.shape)).astype(np.float32)
  batch["ref_logp"] = np.asarray(fns["logp"](fns[ref], batch))
  return batch


def test_rows_are_the_recorded_states():
  traj, fills = _trajectory()
  cfg = cj_grpo.CJGRPOConfig()
  batch = cj_grpo.build_batch(traj, ADV, None, cfg, jdiff.preset("tiny_llada"))
  s_max, p, g = 5, 3, 6
  assert batch["input_ids"].shape == (2 * s_max, p + g)
  covered = np.zeros((2, g), int)
  for r in range(2 * s_max):
    b, s = divmod(r, s_max)
    assert batch["response_index"][r] == b and batch["step_index"][r] == s
    before = traj.states[s - 1, b] if s > 0 else np.full(g, M)
    np.testing.assert_array_equal(
        batch["input_ids"][r], np.concatenate([traj.prompt_ids[b], before])
    )
    np.testing.assert_array_equal(batch["targets"][r, p:], traj.states[s, b])
    pos = batch["loss_mask"][r, p:]
    expect = np.zeros(g, bool)
    if s < len(fills[b]):
      expect[fills[b][s]] = True
    np.testing.assert_array_equal(pos, expect)
    assert not batch["loss_mask"][r, :p].any()
    covered[b] += pos
  # pos_s partition the generated tokens: each exactly once.
  np.testing.assert_array_equal(covered, np.ones((2, g), int))
  # Positions count real tokens; the left pad of row 1 is invalid.
  np.testing.assert_array_equal(batch["positions"][s_max], [0, 0, 1, 2, 3, 4, 5, 6, 7])
  np.testing.assert_array_equal(batch["valid"][s_max, :3], [False, True, True])
  # Weights: each of the 4 non-empty steps carries 1/4, spread evenly over its tokens.
  w = batch["loss_weight"].reshape(2, s_max, -1).sum(axis=(0, 2))
  np.testing.assert_allclose(w, [0.25, 0.25, 0.25, 0.25, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(batch["advantages"], np.repeat(ADV, s_max))


def test_needs_states():
  traj, _ = _trajectory()
  with pytest.raises(ValueError, match="record_states=True"):
    cj_grpo.build_batch(
        traj.replace(states=None), ADV, None, cj_grpo.CJGRPOConfig(), jdiff.preset("tiny_llada")
    )
  assert methods.get("cj_grpo").loss_fn is cj_grpo.loss_fn


def test_first_inner_step_ratio_one_kl_zero(llada, fns):
  traj, fills = _trajectory()
  batch = _with_old_ref(fns, cj_grpo.build_batch(traj, ADV, None, CFG, llada.config), "params")
  (loss, m), _ = fns["value_grad"](fns["params"], batch)
  np.testing.assert_allclose(m["ratio_mean"], 1.0, atol=1e-6)
  np.testing.assert_allclose(m["kl"], 0.0, atol=1e-6)
  assert float(m["clip_frac"]) == 0.0
  # ρ = 1: L_s = −mean over pos_s of A, averaged over the 4 non-empty steps.
  per_step = []
  for s in range(4):
    a = [ADV[b] for b in range(2) for _ in (fills[b][s] if s < len(fills[b]) else [])]
    per_step.append(-np.mean(a))
  np.testing.assert_allclose(loss, np.mean(per_step), rtol=1e-5)
  assert float(m["num_tokens"]) == 12


def _naive_grad(model, traj, old, ref, cfg):
  """Loss and gradient of a per-step Python loop over unbatched forwards (unpadded prompt,
  default positions, full-vocab log-softmax; §3.3 steps 4–5):
  ``(1/S) Σ_s Σ_b Σ_{pos_s} λ / |pos_s|``, accumulated one (step, rollout) at a time."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def row_term(params, ids, n_real, targets, pos, o, rf, a, scale):
    # ids: [real prompt | x_{s-1} | right padding] (one shape for every row: one compile)
    g = targets.shape[0]
    valid = jnp.arange(ids.shape[0]) < n_real
    logits, _ = nnx.merge(graphdef, params, rest)(ids[None], None, valid[None])
    lp = jax.nn.log_softmax(jax.lax.dynamic_slice_in_dim(logits[0], n_real - g, g), -1)
    logp = lp[jnp.arange(g), targets]
    ratio = jnp.exp(logp - o)
    surr = jnp.minimum(ratio * a, jnp.clip(ratio, 1 - cfg.eps, 1 + cfg.eps) * a)
    kl = jnp.exp(rf - logp) - (rf - logp) - 1
    return scale * jnp.sum(jnp.where(pos, -surr + cfg.beta * kl, 0.0))

  row_grad = jax.jit(jax.value_and_grad(row_term))

  states = np.asarray(traj.states)
  s_max, nb, g = states.shape
  p = traj.prompt_ids.shape[1]
  befores = np.concatenate([np.full((1, nb, g), M), states[:-1]])
  pos = (
      (befores == M)
      & (states != M)
      & (np.arange(s_max)[:, None, None] < np.asarray(traj.num_steps)[None, :, None])
  )
  n_steps = int((pos.sum(axis=(1, 2)) > 0).sum())
  total, grads = 0.0, None
  for s in range(s_max):
    den = pos[s].sum()
    for b in range(nb):
      if not pos[s, b].any():
        continue
      ids = np.concatenate([traj.prompt_ids[b][traj.prompt_mask[b]], befores[s, b]])
      n_real = len(ids)
      ids = np.pad(ids, (0, p + g - n_real), constant_values=1)
      r = b * s_max + s
      v, gr = row_grad(
          params,
          ids,
          n_real,
          states[s, b],
          pos[s, b],
          old[r, p:],
          ref[r, p:],
          ADV[b],
          1.0 / (den * n_steps),
      )
      total += v
      grads = gr if grads is None else jax.tree.map(jnp.add, grads, gr)
  return total, grads


def test_gradient_matches_naive_and_modes_agree(llada, fns):
  traj, _ = _trajectory()
  acc_cfg = cj_grpo.CJGRPOConfig(step_batching="accumulate")
  batch = _with_old_ref(fns, cj_grpo.build_batch(traj, ADV, None, CFG, llada.config), noise=0.6)
  (loss, m), grads = fns["value_grad"](fns["params"], batch)
  assert 0 < float(m["clip_frac"]) < 1  # the clip is exercised
  n_loss, n_grads = _naive_grad(llada, traj, batch["old_logp"], batch["ref_logp"], CFG)
  np.testing.assert_allclose(loss, n_loss, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(n_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)

  # "accumulate": the update step's strided split with grad_accum = S_max gives one step per
  # micro-batch; the mean of the micro-batch losses / grads is the same loss / gradient.
  acc = cj_grpo.build_batch(traj, ADV, None, acc_cfg, llada.config)
  acc.update(old_logp=batch["old_logp"], ref_logp=batch["ref_logp"])
  micro = jax.tree.map(lambda x: np.asarray(_split_micro(x, 5)), acc)
  tot_loss, tot = 0.0, None
  for i in range(5):
    mb = jax.tree.map(lambda x: x[i], micro)
    assert set(mb["step_index"].tolist()) == {i}
    (l, _), gr = fns["value_grad"](fns["params"], mb)
    tot_loss += l / 5
    tot = gr if tot is None else jax.tree.map(jnp.add, tot, gr)
  np.testing.assert_allclose(tot_loss, loss, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(tot), jax.tree.leaves(grads)):
    # Two programs summing the same terms in another order: float32 rounding on gradients of
    # order 1e-2 (atol 1e-7 was within a few ulps of them).
    np.testing.assert_allclose(np.asarray(a) / 5, b, rtol=1e-4, atol=1e-6)


def test_sampler_logprobs_match(llada, fns):
  llada_sampler = pytest.importorskip("jdiff.sampling.llada")
  if "record_states" not in {f.name for f in dataclasses.fields(llada_sampler.LLaDASamplerConfig)}:
    pytest.skip("LLaDA sampler has no record_states option")
  cfg_s = llada_sampler.LLaDASamplerConfig(
      gen_length=8, block_length=4, steps=4, temperature=1.0, record_states=True
  )
  ids = np.array([[1, 5, 6, 7], [8, 9, 10, 11]], np.int32)
  mask = np.array([[0, 1, 1, 1], [1, 1, 1, 1]], bool)
  traj = jax.device_get(llada_sampler.sample(llada, ids, mask, jax.random.key(3), cfg_s))
  batch = cj_grpo.build_batch(traj, np.zeros(2, np.float32), None, CFG, llada.config)
  logp = np.asarray(fns["logp"](fns["params"], batch))
  p, g, s_max = 4, 8, traj.states.shape[0]
  raw_steps = np.asarray(traj.raw_step_map)
  for r in range(batch["input_ids"].shape[0]):
    b, s = divmod(r, s_max)
    pos = batch["loss_mask"][r, p:]
    np.testing.assert_array_equal(pos, raw_steps[b] == s + 1)  # step s unmasked exactly these
    np.testing.assert_allclose(
        logp[r, p:][pos], np.asarray(traj.raw_logprobs)[b][pos], rtol=2e-5, atol=1e-5
    )


def test_block_model_rows_match_block_sampler():
  """SDAR: ``[prompt | x_{s-1}]`` under the native block-causal mask is the state the block
  sampler saw; a row that stops early (its later states are the padded final completion)
  gets no spurious positions, and tokens decoded after the stop keep their transitions."""
  from jdiff.sampling import block
  from jdiff.sampling.block import BlockSamplerConfig

  sdar = jdiff.DiffusionLM(jdiff.preset("tiny_sdar"), rngs=nnx.Rngs(0))
  cfg_s = BlockSamplerConfig(
      gen_length=10,
      steps_per_block=2,
      strategy="low_confidence_static",
      temperature=1.0,
      record_states=True,
      stop_ids=(40, 41, 42, 43, 44),
  )
  traj = jax.device_get(
      block.sample(sdar, [[5, 6, 7], [8, 9, 10, 11, 12, 13]], None, jax.random.key(0), cfg_s)
  )
  assert traj.lengths.min() < 10  # one row stopped early (the stop ids are chosen for that)
  batch = cj_grpo.build_batch(traj, np.zeros(2, np.float32), None, CFG, sdar.config)
  logp = np.asarray(jax.jit(lambda b: cj_grpo.logprob_fn(sdar, b, CFG))(batch))
  g, s_max = 10, traj.states.shape[0]
  p = batch["input_ids"].shape[1] - g
  raw_steps = np.asarray(traj.raw_step_map)
  for r in range(batch["input_ids"].shape[0]):
    b, s = divmod(r, s_max)
    pos = batch["loss_mask"][r, p:]
    np.testing.assert_array_equal(pos, raw_steps[b] == s + 1)
    kept = pos & (np.arange(g) < traj.lengths[b])  # Trajectory.logprobs: kept tokens only
    np.testing.assert_allclose(
        logp[r, p:][kept], np.asarray(traj.logprobs)[b][kept], rtol=2e-5, atol=1e-5
    )


def test_cj_grpo_raises_reward(llada):
  """A few rollout/update rounds of CJ-GRPO (LLaDA sampler, ASS schedule, recorded states,
  KL to the frozen initial policy) raise a toy reward: the fraction of kept completion
  tokens with an id below 48 (seeded)."""
  import functools

  import optax

  from jdiff.data.loading import left_pad
  from jdiff.rl import advantages as adv_lib
  from jdiff.sampling import llada as llada_sampler
  from jdiff.train.update import init_train_state, make_update_step

  low_ids, group = 48, 4

  def reward(traj):
    toks, lengths = np.asarray(traj.tokens), np.asarray(traj.lengths)
    kept = np.arange(toks.shape[1])[None] < lengths[:, None]
    return ((toks < low_ids) & kept).sum(1) / np.maximum(kept.sum(1), 1)

  cfg = cj_grpo.CJGRPOConfig()  # eps 0.5, beta 0.04 to the frozen reference
  sampler = llada_sampler.LLaDASamplerConfig(
      gen_length=8, block_length=8, steps=3, schedule="ass", temperature=1.0, record_states=True
  )
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18]]
  ids, mask, _ = left_pad([p for p in prompts for _ in range(group)], llada.config.pad_token_id)
  opt = optax.adam(3e-3)
  graphdef, state = init_train_state(llada, opt)
  _, ref_params, _ = nnx.split(llada, nnx.Param, ...)  # the fixture is never updated
  update = make_update_step(graphdef, opt, functools.partial(cj_grpo.loss_fn, cfg=cfg))
  score = jax.jit(
      lambda params, rest, batch: cj_grpo.logprob_fn(nnx.merge(graphdef, params, rest), batch, cfg)
  )

  def rollout(state, key, reps=1):
    m = nnx.merge(graphdef, state.params, state.rest)
    return jax.device_get(
        llada_sampler.sample(m, np.tile(ids, (reps, 1)), np.tile(mask, (reps, 1)), key, sampler)
    )

  def mean_reward(state):
    return np.mean([reward(rollout(state, jax.random.key(1000 + s), 2)).mean() for s in range(2)])

  before = mean_reward(state)
  for it in range(6):
    traj = rollout(state, jax.random.key(it))
    assert traj.states.shape[0] == 3  # ASS: floor(log2 8) steps of 1, 2 and 5 tokens
    a = np.asarray(adv_lib.group_zscore(jnp.asarray(reward(traj)), group))
    batch = cj_grpo.build_batch(traj, a, None, cfg, llada.config)
    batch["old_logp"] = score(state.params, state.rest, batch)
    batch["ref_logp"] = score(ref_params, state.rest, batch)
    for _ in range(2):
      state, metrics = update(state, batch)
      assert int(metrics["skipped"]) == 0
  after = mean_reward(state)
  print(f"toy reward before {before:.3f} after {after:.3f}")
  assert after > before + 0.1, (before, after)
