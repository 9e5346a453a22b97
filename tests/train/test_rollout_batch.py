"""rl.rollout_batch: a rollout split into micro-batches (one sampler call each) gives the
trajectory of one call over the whole batch, since every row draws with its global index's
keys (``row_offset``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdiff.sampling import registry as samplers
from jdiff.sharding import make_mesh
from jdiff.train.config import RLConfig
from jdiff.train.rollout import rollout

PROMPTS = [
    [5, 6, 7, 8, 9],
    [10, 11, 12, 13, 14, 15, 16, 17],
    [20, 21, 22],
    [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41],
    [40, 41],
    [8, 9, 10, 11],
]
FIELDS = ("tokens", "step_map", "num_steps", "lengths", "prompt_ids", "prompt_mask", "states")


def _stopping(model):
  """The model with its EOS column scaled up, so rows stop at different steps."""
  m = nnx.clone(model)
  w = np.array(m.lm_head[...])
  w[:, m.config.eos_token_id] *= 1.5
  m.lm_head[...] = jnp.asarray(w)
  return m


def _check_same(name, model, cfg, micro, steps_differ=True):
  mesh = make_mesh((1, 1, 1))
  cfg = samplers.make_config(name, cfg)
  args = (model, mesh, name, cfg, PROMPTS, 1, 12, jax.random.key(4))
  one, rows_one = rollout(*args)
  parts, rows = rollout(*args, rollout_batch=micro)
  one, parts = jax.device_get((one, parts))
  np.testing.assert_array_equal(np.sort(rows), rows_one)
  if steps_differ:  # rows' loops differ in length: micro-batches end at other iterations
    assert len(set(one.num_steps.tolist())) > 1
  for field in FIELDS:
    np.testing.assert_array_equal(getattr(parts, field), getattr(one, field), err_msg=field)
  np.testing.assert_allclose(parts.logprobs, one.logprobs, rtol=1e-5, atol=1e-7)
  # Without the offsets the micro-batches would repeat the first rows' draws.
  assert not np.array_equal(
      jax.device_get(rollout(*args[:-1], jax.random.key(5))[0].tokens), one.tokens
  )


@pytest.mark.parametrize("micro", [2, 3])
def test_block_rollout_in_micro_batches_is_one_call(hf_checkpoints, jdiff_models, micro):
  m = _stopping(jdiff_models(hf_checkpoints("sdar")))
  cfg = dict(
      gen_length=10,
      steps_per_block=2,
      temperature=0.7,
      top_p=0.95,
      threshold=0.2,
      record_states=True,
      stop_ids=(m.config.eos_token_id,),
  )
  _check_same("block", m, cfg, micro)


def test_llada_rollout_in_micro_batches_is_one_call(hf_checkpoints, jdiff_models):
  m = jdiff_models(hf_checkpoints("llada"))
  cfg = dict(gen_length=8, steps=4, block_length=4, temperature=0.8, record_states=True)
  _check_same("llada", m, cfg, 2, steps_differ=False)


def test_rollout_batch_must_divide_the_step():
  assert RLConfig(prompts_per_step=4, group_size=4, rollout_batch=8).rollout_batch == 8
  with pytest.raises(ValueError, match=r"config.rl.rollout_batch=6 must be 0 or divide the 16"):
    RLConfig(prompts_per_step=4, group_size=4, rollout_batch=6)


def test_scores_in_row_chunks_equal_one_call():
  """Runtime.scores scores rl.grad_accum consecutive row chunks and concatenates them."""
  from jdiff.train.runtime import score_chunks

  batch = {
      "x": np.arange(24, dtype=np.float32).reshape(6, 4),
      "w": np.arange(6) % 2,
      "scale": np.float32(3.0),
  }
  calls = []

  def score(b):
    calls.append(len(b["x"]))
    return b["x"] * b["scale"] + b["w"][:, None]

  want = score(batch)
  calls.clear()
  np.testing.assert_array_equal(score_chunks(score, batch, 3), want)
  assert calls == [2, 2, 2]
  calls.clear()
  np.testing.assert_array_equal(score_chunks(score, batch, 4), want)  # 4 does not divide 6
  assert calls == [6]
