"""The one hidden-states -> log-probs path against a plain log-softmax over full logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jdiff
from jdiff.models import logprobs as lp_lib

T = 10


def _plain(logits, targets, start, shift):
  """Full-vocab log-softmax; Dream's prediction for position j is output j-1 (0 for j=0)."""
  lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  src = np.arange(start, start + targets.shape[1])
  if shift:
    src = np.maximum(src - 1, 0)
  return jnp.take_along_axis(lp[:, src], targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("name", ["tiny_llada", "tiny_dream"])
@pytest.mark.parametrize("start,width", [(0, T), (0, 4), (6, 4), (1, 9)])
def test_model_token_logprobs_matches_full_logits(name, start, width):
  model = jdiff.DiffusionLM(jdiff.preset(name), rngs=nnx.Rngs(0))
  assert model.config.shift_logits == (name == "tiny_dream")
  tokens = jax.random.randint(jax.random.key(1), (2, T), 0, 128)
  targets = jax.random.randint(jax.random.key(2), (2, width), 0, 128)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state):
    m = nnx.merge(graphdef, state)
    logits, _ = m(tokens)
    want = _plain(logits, targets, start, m.config.shift_logits)
    got, ent = lp_lib.model_token_logprobs(
        m, tokens, None, None, targets, 48, return_entropy=True, start=start
    )
    return want, got, ent

  want, got, ent = run(state)
  assert got.dtype == jnp.float32 and got.shape == (2, width)
  # Chunked online log-sum-exp vs one log-softmax: float32 reordering only.
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(ent) > 0)


def test_token_logprobs_slices_before_the_head():
  """Hidden-state level: ``start``/``shift`` pick rows j (or j-1) of ``hidden``."""
  k = jax.random.split(jax.random.key(0), 3)
  h = jax.random.normal(k[0], (2, T, 16))
  w = jax.random.normal(k[1], (16, 50)) * 0.5
  tgt = jax.random.randint(k[2], (2, 3), 0, 50)
  logits = jnp.einsum("btd,dv->btv", h, w)
  for start in (0, 2, T - 3):
    for shift in (False, True):
      got = lp_lib.token_logprobs(h, w, tgt, start=start, shift=shift, chunk_size=16)
      np.testing.assert_allclose(
          np.asarray(got), np.asarray(_plain(logits, tgt, start, shift)), rtol=1e-5, atol=1e-6
      )


def test_predicting_hidden_rows_and_bounds():
  x = jnp.arange(6).reshape(1, 6, 1)
  rows = lambda *a: np.asarray(lp_lib.predicting_hidden(x, *a))[0, :, 0].tolist()
  assert rows(2, 3, False) == [2, 3, 4]
  assert rows(2, 3, True) == [1, 2, 3]
  assert rows(0, 3, True) == [0, 0, 1]
  assert rows(0, 6, True) == np.asarray(lp_lib.shift_for_dream(x))[0, :, 0].tolist()
  with pytest.raises(ValueError, match="outside the 6 hidden states"):
    lp_lib.predicting_hidden(x, 4, 3, False)
