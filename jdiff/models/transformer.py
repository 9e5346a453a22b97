"""The dLLM backbone (LLaDA / Dream / SDAR) as Flax NNX modules, used pure-functionally.

A call is ``(tokens, positions, mask, cache) -> (logits, cache)``. Layers are stored
stacked along a leading ``layers`` axis and run with ``lax.scan``, so compile time does not
grow with depth; one layer can be rematerialised with a configurable policy.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdiff.models import masks as masks_lib
from jdiff.models.chunked_attention import TiledMask, chunked_attention, tiled_mask
from jdiff.models.config import ModelConfig
from jdiff.models.kv_cache import KVCache
from jdiff.models.layers import F32, attention, attention_with_cache, rms_norm, rope
from jdiff.models.lora import LoraScale, QuantizedBase, dense
from jdiff.sharding.rules import constrain

_REMAT = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_INIT_STD = 0.02


def _param(rngs: nnx.Rngs, shape, axes, dtype, init="normal") -> nnx.Param:
  if init == "normal":
    value = _INIT_STD * jax.random.normal(rngs.params(), shape, F32)
  elif init == "ones":
    value = jnp.ones(shape, F32)
  else:
    value = jnp.zeros(shape, F32)
  return nnx.Param(value.astype(dtype), logical_axes=tuple(axes))


class LayerStack(nnx.Module):
  """All transformer layers, each parameter stacked on a leading ``layers`` axis."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c, n = config, config.num_layers
    d, f, hd, h, kv = c.hidden_size, c.intermediate_size, c.head_dim, c.num_heads, c.num_kv_heads
    pd = jnp.dtype(c.param_dtype)
    self.attn_norm = _param(rngs, (n, d), ("layers", "norm"), pd, "ones")
    self.wq = _param(rngs, (n, d, h, hd), ("layers", "embed", "heads", "head_dim"), pd)
    self.wk = _param(rngs, (n, d, kv, hd), ("layers", "embed", "kv_heads", "head_dim"), pd)
    self.wv = _param(rngs, (n, d, kv, hd), ("layers", "embed", "kv_heads", "head_dim"), pd)
    if c.qkv_bias:
      self.bq = _param(rngs, (n, h, hd), ("layers", "heads", "head_dim"), pd, "zeros")
      self.bk = _param(rngs, (n, kv, hd), ("layers", "kv_heads", "head_dim"), pd, "zeros")
      self.bv = _param(rngs, (n, kv, hd), ("layers", "kv_heads", "head_dim"), pd, "zeros")
    if c.qk_norm:
      self.q_norm = _param(rngs, (n, hd), ("layers", "norm"), pd, "ones")
      self.k_norm = _param(rngs, (n, hd), ("layers", "norm"), pd, "ones")
    self.wo = _param(rngs, (n, h, hd, d), ("layers", "heads", "head_dim", "embed"), pd)
    self.mlp_norm = _param(rngs, (n, d), ("layers", "norm"), pd, "ones")
    self.w_gate = _param(rngs, (n, d, f), ("layers", "embed", "mlp"), pd)
    self.w_up = _param(rngs, (n, d, f), ("layers", "embed", "mlp"), pd)
    self.w_down = _param(rngs, (n, f, d), ("layers", "mlp", "embed"), pd)

  def arrays(self) -> dict:
    # Adapters (LoraParam is a Param), their scale and a 4-bit base are scanned with the
    # layers' own weights: jdiff.models.lora.dense reads them from the per-layer slice.
    kinds = (nnx.Param, LoraScale, QuantizedBase)
    return {k: v[...] for k, v in vars(self).items() if isinstance(v, kinds)}


def _layer(config: ModelConfig, x, p, positions, mask, cache_k, cache_v, window=None):
  """One pre-norm block. Returns the new residual stream and this call's (k, v).

  ``window = (start, width)``: only the queries of positions ``[start, start + width)`` are
  computed (keys and values still cover every token), and the returned stream is that
  slice. Each kept row is computed exactly as in the full call.
  """
  dt = x.dtype
  c = config
  h = rms_norm(x, p["attn_norm"], c.rms_norm_eps)
  k = dense("wk", h, p, dt)
  v = dense("wv", h, p, dt)
  q_pos = positions
  if window is not None:
    cut = lambda a: jax.lax.dynamic_slice_in_dim(a, window[0], window[1], axis=1)  # noqa: E731
    x, h, q_pos, mask = cut(x), cut(h), cut(positions), cut(mask)
  q = dense("wq", h, p, dt)
  if c.qkv_bias:
    q, k, v = q + p["bq"].astype(dt), k + p["bk"].astype(dt), v + p["bv"].astype(dt)
  if c.qk_norm:  # Qwen3/SDAR: per-head RMSNorm before RoPE
    q = rms_norm(q, p["q_norm"], c.rms_norm_eps)
    k = rms_norm(k, p["k_norm"], c.rms_norm_eps)
  q = rope(q, q_pos, c.rope_theta)
  k = rope(k, positions, c.rope_theta)
  q = constrain(q, ("batch", "length", "heads", "head_dim"))
  if isinstance(mask, TiledMask):
    out = chunked_attention(q, k, v, mask.spec, mask.chunk_q, mask.chunk_k, mask.needed)
  elif cache_k is None:
    out = attention(q, k, v, mask)
  else:
    out = attention_with_cache(q, k, v, cache_k.astype(dt), cache_v.astype(dt), mask)
  x = x + dense("wo", out, p, dt)
  x = constrain(x, ("batch", "length", "embed"))
  h = rms_norm(x, p["mlp_norm"], c.rms_norm_eps)
  gate = dense("w_gate", h, p, dt)
  up = dense("w_up", h, p, dt)
  act = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
  x = x + dense("w_down", act, p, dt)
  x = constrain(x, ("batch", "length", "embed"))
  return x, k, v


StoreArg = Union[bool, jax.Array]


class Backbone(nnx.Module):
  """Embedding, the layer stack and the final norm: tokens -> normalised hidden states."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    pd = jnp.dtype(config.param_dtype)
    self.embed = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), pd)
    self.layers = LayerStack(config, rngs=rngs)
    self.final_norm = _param(rngs, (config.hidden_size,), ("norm",), pd, "ones")

  def __call__(
      self,
      tokens: jax.Array,
      positions: Optional[jax.Array] = None,
      mask: Optional[jax.Array] = None,
      cache: Optional[KVCache] = None,
      *,
      store: StoreArg = False,
      window: Optional[Tuple[Any, int]] = None,
  ):
    """Hidden states ``[B, T, D]`` and the cache.

    ``mask``: bool ``[B, T, T]`` (or ``[B, T, S + T]`` with a cache), a ``[B, T]`` padding
    mask, a :class:`jdiff.models.masks.MaskSpec`, or None for the family's native pattern.

    ``store`` (True, or bool ``[B, T]``: which tokens) writes this call's keys and values
    into ``cache`` at slot = position. Without a cache it returns a new one of ``T`` slots
    in which slot i holds input token i (its K/V rotated at its own position; tokens not
    stored are invalid slots): a whole-canvas pass's cache built without a scatter.

    ``window = (start, width)`` (start may be traced, width static) returns only positions
    ``[start, start + width)``, ``[B, width, D]``: the last layer then computes queries, the
    attention output and the MLP for those rows only (every layer's keys and values still
    cover all tokens, so the cache is stored as without it). A sampler that reads logits on
    one block of a bidirectional canvas needs nothing else, and the last layer's work
    outside the block is skipped; the kept rows equal the full call's.
    """
    c = self.config
    tokens = jnp.asarray(tokens, jnp.int32)
    b, t = tokens.shape
    if window is not None:
      width = window[1]
      is_int = isinstance(width, (np.integer, int)) and not isinstance(width, (bool, np.bool_))
      if not is_int or not 0 < int(width) <= t:
        raise ValueError(f"window width must be a static int in [1, {t}], got {window[1]!r}")
      # A window as wide as the input is all of it (a dynamic slice clamps its start): the
      # plain scan then runs, without a peeled last layer that would save nothing.
      window = None if int(width) == t else (jnp.asarray(window[0], jnp.int32), int(width))
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    positions = jnp.asarray(positions, jnp.int32)
    mask = self._attention_mask(positions, mask, cache, window)
    storing = not (isinstance(store, bool) and not store)

    dt = jnp.dtype(c.dtype)
    x = jnp.take(self.embed[...], tokens, axis=0).astype(dt)
    x = constrain(x, ("batch", "length", "embed"))

    def body(x, xs):
      p, ck, cv = xs
      x, k, v = _layer(c, x, p, positions, mask, ck, cv)
      return x, ((k, v) if storing else None)

    if c.remat != "none":
      body = jax.checkpoint(body, policy=_REMAT[c.remat], prevent_cse=False)
    stacked = (self.layers.arrays(), *((cache.k, cache.v) if cache is not None else (None, None)))
    if window is None:
      x, new_kv = jax.lax.scan(body, x, stacked)
    else:
      # All layers but the last as usual, then the last on the window's queries. The layers
      # are indexed in place (as scan indexes its xs): slicing off the last one would copy
      # the whole stack. A lax.cond on the layer index inside one scan measured slower.
      n = c.num_layers
      take = lambda i: jax.tree.map(  # noqa: E731
          lambda a: jax.lax.dynamic_index_in_dim(a, i, keepdims=False), stacked
      )
      x, new_kv = jax.lax.scan(lambda x, i: body(x, take(i)), x, jnp.arange(n - 1, dtype=jnp.int32))
      p, ck, cv = take(jnp.int32(n - 1))
      x, k, v = _layer(c, x, p, positions, mask, ck, cv, window)
      if storing:
        new_kv = tuple(jnp.concatenate([head, last[None]]) for head, last in zip(new_kv, (k, v)))
    h = rms_norm(x, self.final_norm[...], c.rms_norm_eps)
    if storing:
      write = (
          jnp.ones((b, t), bool)
          if isinstance(store, bool)
          else jnp.broadcast_to(jnp.asarray(store, bool), (b, t))
      )
      if cache is None:
        cache = KVCache.from_tokens(new_kv[0], new_kv[1], write)
      else:
        cache = cache.store(new_kv[0], new_kv[1], positions, write)
    return h, cache

  def _attention_mask(self, positions, mask, cache, window):
    """A :class:`TiledMask` for the chunked kernel where it applies, else the dense mask.

    The chunked kernel runs self-attention over the whole input: with
    ``attention_impl="chunked"``, no cache and no window, a spec (or no mask, or a ``[B, L]``
    padding mask) stays compact. A dense ``[B, L, L]`` mask always runs the dense path, and
    a spec is made dense where the chunked kernel does not apply.
    """
    c = self.config
    t = positions.shape[1]
    chunked = c.attention_impl == "chunked" and cache is None and window is None
    if mask is None or (not isinstance(mask, masks_lib.MaskSpec) and jnp.ndim(mask) == 2):
      if chunked:
        spec = masks_lib.spec_native(c.block_size if c.block_causal else None, positions, mask)
        return tiled_mask(spec, c.attention_chunk_q, c.attention_chunk_k)
    if isinstance(mask, masks_lib.MaskSpec):
      if mask.blocks.shape != positions.shape:
        raise ValueError(
            f"attention mask spec has per-token shape {mask.blocks.shape}; "
            f"expected {positions.shape} (the tokens' [B, L])"
        )
      if chunked:
        return tiled_mask(mask, c.attention_chunk_q, c.attention_chunk_k)
      mask = masks_lib.dense(mask)
    return self._full_mask(positions, mask, cache)

  def _full_mask(self, positions, mask, cache):
    c = self.config
    t = positions.shape[1]
    if mask is None:
      mask = masks_lib.native(c.block_size if c.block_causal else None, positions)
    mask = jnp.asarray(mask, bool)
    if mask.ndim == 2:  # [B, L] key padding
      mask = (
          masks_lib.bidirectional(mask)
          if not c.block_causal
          else masks_lib.block_causal(positions, c.block_size, mask)
      )
    expected = (t + cache.size) if cache is not None else t
    if cache is not None and mask.shape[-1] == t:
      mask = masks_lib.with_cache(cache.valid, mask)
    if mask.shape[-2:] != (t, expected):
      raise ValueError(
          f"attention mask has shape {mask.shape}; expected [B, {t}, {expected}] "
          f"for {t} query tokens"
          + (f" and a cache of {cache.size} slots" if cache is not None else "")
      )
    return mask


class DiffusionLM(nnx.Module):
  """Backbone plus LM head. ``model(tokens, positions, mask, cache) -> (logits, cache)``.

  Logits are float32 and raw: Dream's are not re-aligned here (``config.shift_logits``).
  """

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.backbone = Backbone(config, rngs=rngs)
    if not config.tie_word_embeddings:
      self.lm_head = _param(
          rngs,
          (config.hidden_size, config.vocab_size),
          ("embed", "vocab"),
          jnp.dtype(config.param_dtype),
      )

  def head_weight(self) -> jax.Array:
    if self.config.tie_word_embeddings:
      return self.backbone.embed[...].T
    return self.lm_head[...]

  def logits_from_hidden(self, h: jax.Array) -> jax.Array:
    w = self.head_weight().astype(h.dtype)
    logits = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=F32)
    return constrain(logits, ("batch", "length", "vocab"))

  def __call__(self, tokens, positions=None, mask=None, cache=None, *, store: StoreArg = False):
    h, cache = self.backbone(tokens, positions, mask, cache, store=store)
    return self.logits_from_hidden(h), cache


class ValueModel(nnx.Module):
  """TraceRL's diffusion value model: the same backbone with a zero-initialised scalar head."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.backbone = Backbone(config, rngs=rngs)
    self.value_head = nnx.Param(
        jnp.zeros((config.hidden_size,), jnp.dtype(config.param_dtype)), logical_axes=("embed",)
    )

  def __call__(self, tokens, positions=None, mask=None, cache=None, *, store: StoreArg = False):
    h, cache = self.backbone(tokens, positions, mask, cache, store=store)
    values = jnp.einsum("btd,d->bt", h.astype(F32), self.value_head[...].astype(F32))
    return values, cache

  @classmethod
  def from_policy(cls, policy: DiffusionLM, *, rngs: Optional[nnx.Rngs] = None) -> "ValueModel":
    """A value model whose backbone is a copy of ``policy``'s (the reference initialisation)."""
    model = cls(policy.config, rngs=rngs or nnx.Rngs(0))
    nnx.update(model.backbone, jax.tree.map(jnp.copy, nnx.state(policy.backbone)))
    return model
