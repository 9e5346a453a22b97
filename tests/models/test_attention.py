"""``attention_with_cache`` (one softmax over a heads-first cache and the new tokens, no key
concatenation) equals plain ``attention`` over the concatenated keys, a closed form."""

import jax.numpy as jnp
import numpy as np

from jdiff.models.layers import attention, attention_with_cache

B, T, S, H, KV, HD = 3, 4, 10, 4, 2, 8


def _case(seed):
  rng = np.random.RandomState(seed)
  q = rng.randn(B, T, H, HD).astype(np.float32)
  k, v = (rng.randn(B, T, KV, HD).astype(np.float32) for _ in range(2))
  ck, cv = (rng.randn(B, S, KV, HD).astype(np.float32) for _ in range(2))
  mask = rng.rand(B, T, S + T) < 0.6
  mask[0, 1] = False  # a query that sees nothing: both fall back to a uniform average
  mask[1, :, :S] = False  # an empty cache
  return q, k, v, ck, cv, mask


def test_matches_attention_over_concatenated_keys():
  for seed in range(3):
    q, k, v, ck, cv, mask = _case(seed)
    want = attention(
        jnp.asarray(q), jnp.concatenate([ck, k], 1), jnp.concatenate([cv, v], 1), jnp.asarray(mask)
    )
    heads_first = lambda a: jnp.asarray(a).transpose(0, 2, 3, 1)  # noqa: E731 [B, KV, HD, S]
    got = attention_with_cache(
        jnp.asarray(q),
        jnp.asarray(k),
        jnp.asarray(v),
        heads_first(ck),
        heads_first(cv),
        jnp.asarray(mask),
    )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_blocked_query_is_uniform_over_all_keys():
  q, k, v, ck, cv, mask = _case(0)
  heads_first = lambda a: jnp.asarray(a).transpose(0, 2, 3, 1)  # noqa: E731
  got = attention_with_cache(
      jnp.asarray(q),
      jnp.asarray(k),
      jnp.asarray(v),
      heads_first(ck),
      heads_first(cv),
      jnp.asarray(mask),
  )
  values = np.concatenate([cv[0], v[0]], 0)  # [S + T, KV, HD]
  want = np.repeat(values.mean(0), H // KV, axis=0)  # query head h reads KV head h // g
  np.testing.assert_allclose(np.asarray(got)[0, 1], want, rtol=1e-5, atol=1e-6)
