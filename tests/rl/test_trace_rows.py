"""TraceRL rows rebuild exactly the states the sampler saw (the trajectory-consistency test)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_fixtures
import jdiff
from jdiff.models import masks
from jdiff.rl.trace_rows import build_block_rows, build_full_attention_rows
from jdiff.sampling import block
from jdiff.sampling.block import BlockSamplerConfig


@pytest.fixture(scope="module")
def sdar(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("sdar"))
  hf_fixtures.make_sdar(d, seed=3)
  return jdiff.from_pretrained(d)


def _row_logprobs(model, rows, noisy_layout=True):
  ids = jnp.asarray(rows["input_ids"])
  pos = jnp.asarray(rows["positions"])
  if noisy_layout:
    mask = masks.block_diffusion(rows["blocks"], rows["noisy"], rows["valid"])
  else:
    mask = masks.bidirectional(rows["valid"])
  logits = jdiff.forward(model, ids, attention_mask=mask, positions=pos)
  if model.config.shift_logits:
    logits = jnp.concatenate([logits[:, :1], logits[:, :-1]], axis=1)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return np.asarray(jnp.take_along_axis(logp, jnp.asarray(rows["targets"])[..., None], -1)[..., 0])


@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic"])
def test_block_rows_reproduce_sampler_logprobs(sdar, strategy):
  cfg = BlockSamplerConfig(
      gen_length=10, steps_per_block=4, strategy=strategy, temperature=1.0, threshold=0.3
  )
  prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 19, 20], [21] * 13]
  traj = block.sample(sdar, prompts, None, jax.random.key(0), cfg)
  c = sdar.config
  rows = build_block_rows(
      traj, block_size=c.block_size, mask_id=c.mask_token_id, pad_id=c.pad_token_id, shrink=1
  )
  assert rows["input_ids"].shape[0] == len(prompts) * c.block_size
  got = _row_logprobs(sdar, rows)
  g = traj.tokens.shape[1]
  lengths = np.asarray(traj.lengths)
  step_map = np.asarray(traj.step_map)
  covered = np.zeros_like(step_map, dtype=int)
  for r in range(rows["input_ids"].shape[0]):
    b = rows["response_index"][r]
    sel = rows["loss_mask"][r, -g:]
    covered[b] += sel
    np.testing.assert_allclose(
        got[r, -g:][sel], np.asarray(traj.logprobs)[b][sel], rtol=2e-5, atol=1e-5
    )
  # Every kept completion token is supervised exactly once.
  kept = np.arange(g)[None] < lengths[:, None]
  np.testing.assert_array_equal(covered, kept.astype(int))


def test_shrink_groups_steps_and_bounds_rows(sdar):
  cfg = BlockSamplerConfig(
      gen_length=8, steps_per_block=4, strategy="low_confidence_static", temperature=1.0
  )
  traj = block.sample(sdar, [[5, 6, 7, 8, 9]], None, jax.random.key(1), cfg)
  c = sdar.config
  rows = build_block_rows(
      traj, block_size=c.block_size, mask_id=c.mask_token_id, pad_id=c.pad_token_id, shrink=2
  )
  assert rows["input_ids"].shape[0] == math.ceil(c.block_size / 2)
  g = traj.tokens.shape[1]
  steps = np.asarray(traj.step_map)[0]
  # In round 0 every block masks all of its tokens (its first group starts at its first step).
  noisy = rows["input_ids"][0, -g:]
  decoded = steps > 0
  assert np.all(noisy[decoded] == c.mask_token_id)
  # Supervised ids are group-last step ids; each group has at most 2 distinct raw steps.
  for r in range(rows["input_ids"].shape[0]):
    sel = rows["loss_mask"][r, -g:]
    for k in np.unique((np.arange(g)[sel] + 5) // c.block_size):
      in_k = sel & ((np.arange(g) + 5) // c.block_size == k)
      assert len(np.unique(steps[in_k])) <= 2


def test_full_attention_rows_reproduce_logprobs(tmp_path):
  """LLaDA-style trajectory built by hand from greedy steps: rows rebuild each state."""
  hf_fixtures.make_llada(str(tmp_path), seed=4)
  model = jdiff.from_pretrained(str(tmp_path))
  c = model.config
  prompt = np.array([[1, 1, 5, 6, 7]], np.int32)
  pmask = prompt != 1
  g = 6
  canvas = np.concatenate([prompt, np.full((1, g), c.mask_token_id, np.int32)], 1)
  valid = np.concatenate([pmask, np.ones((1, g), bool)], 1)
  pos = np.maximum(np.cumsum(valid, 1) - 1, 0)
  steps = np.zeros((1, g), np.int32)
  logps = np.zeros((1, g), np.float32)
  for step in range(1, 4):  # two tokens per step, most confident first
    logits = np.asarray(
        jdiff.forward(model, canvas, attention_mask=masks.bidirectional(valid), positions=pos)
    )[0, 5:]
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits)))
    ids = lp.argmax(-1)
    conf = np.where(steps[0] == 0, lp.max(-1), -np.inf)
    for j in np.argsort(-conf, kind="stable")[:2]:
      canvas[0, 5 + j] = ids[j]
      steps[0, j] = step
      logps[0, j] = lp[j, ids[j]]
  traj = jdiff.sampling.Trajectory(
      prompt_ids=prompt,
      prompt_mask=pmask,
      tokens=canvas[:, 5:],
      step_map=steps,
      logprobs=logps,
      lengths=np.array([g]),
      num_steps=np.array([3]),
  )
  rows = build_full_attention_rows(
      traj, mask_id=c.mask_token_id, pad_id=c.pad_token_id, shrink=1, max_steps=3
  )
  got = _row_logprobs(model, rows, noisy_layout=False)
  for r in range(3):
    sel = rows["loss_mask"][r, 5:]
    assert sel.sum() == 2
    np.testing.assert_allclose(got[r, 5:][sel], logps[0][sel], rtol=2e-5, atol=1e-5)
