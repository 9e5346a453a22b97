"""LoRA / QLoRA adapters on the stacked layer weights (d1's recipe: docs/design.md).

Why not ``qwix.apply_lora_to_model``: qwix intercepts ``einsum`` / ``dot_general`` calls made
inside a module method and recognises the right-hand operand as a weight by tracing it back
to an ``nnx.Param`` of the *current* module through unary ops (or, failing that, by equal
shape). jdiff's layers run inside ``lax.scan`` over weights stacked on a leading ``layers``
axis: the operand an einsum sees is a scan slice ``[d, ...]`` of a ``[L, d, ...]`` Param
(traced through the scan, not a unary op, and of a different shape), so qwix finds no
weight and silently adds no adapter; and its adapter params would be created per call inside
the scan body, not stacked. So the adapter is jdiff's own, stacked like the layers, while
the 4-bit base quantisation (NF4 / int4 with blockwise scales) is qwix's
(``qwix.quantize`` / ``qwix.dequantize``).

For a target weight ``W`` ``[L, *in, *out]``: ``A`` ``[L, *in, r]`` (uniform in
``±1/sqrt(fan_in)``), ``B`` ``[L, r, *out]`` (zeros) and ``y = x W + (alpha / r) (x A) B``.
The scale ``alpha / r`` is a per-layer non-trainable variable: the reference policy is the
same model with the scale set to 0 (no copy of the base weights).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

# Target weight -> (its einsum in the layer, how many leading non-layer dims it contracts).
TARGETS = {
    "wq": ("btd,dnh->btnh", 1),
    "wk": ("btd,dnh->btnh", 1),
    "wv": ("btd,dnh->btnh", 1),
    "wo": ("btnh,nhd->btd", 2),
    "w_gate": ("btd,df->btf", 1),
    "w_up": ("btd,df->btf", 1),
    "w_down": ("btf,fd->btd", 1),
}
QUANTIZE = ("none", "nf4", "int4")
_BLOCK = 64  # QLoRA's quantisation block size along the contracted dim
_RANK = "z"  # einsum letter of the LoRA rank (unused by the layer einsums)


class LoraParam(nnx.Param):
  """An adapter weight: the only variables a LoRA run trains (and weight-decays)."""


class LoraScale(nnx.Variable):
  """``alpha / rank`` per layer (0 disables the adapter); never trained."""


class QuantizedBase(nnx.Variable):
  """A frozen 4-bit base weight's values or its blockwise scales."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """``config.model.lora``. d1 (LLaDA-8B): rank 128, alpha 64, dropout 0.05, 4-bit base."""

  rank: int = 0  # 0 = no adapter (full fine-tuning)
  alpha: float = 16.0
  dropout: float = 0.0
  targets: Tuple[str, ...] = tuple(TARGETS)
  quantize_base: str = "none"  # "none" | "nf4" | "int4" (qwix, blocks of 64)

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    where = "config.model.lora"
    if not isinstance(self.rank, int) or self.rank < 0:
      raise ValueError(f"{where}.rank: expected an int >= 0, got {self.rank!r}")
    if not self.alpha > 0:
      raise ValueError(f"{where}.alpha: expected > 0, got {self.alpha!r}")
    if not 0 <= self.dropout < 1:
      raise ValueError(f"{where}.dropout: expected in [0, 1), got {self.dropout!r}")
    if self.dropout > 0:
      # The layers run in a scan with no RNG stream; dropping the adapter's input would need
      # one per layer and per call.
      raise ValueError(f"{where}.dropout: adapter dropout is not implemented; set 0.0")
    bad = [t for t in self.targets if t not in TARGETS]
    if bad or not self.targets:
      raise ValueError(
          f"{where}.targets: {bad or 'empty'}; expected names from " f"{sorted(TARGETS)}"
      )
    if self.quantize_base not in QUANTIZE:
      raise ValueError(
          f"{where}.quantize_base: {self.quantize_base!r}; expected one of " f"{QUANTIZE}"
      )

  @classmethod
  def from_section(cls, section: Optional[Mapping[str, Any]]) -> "LoraConfig":
    """From a config section (dict / ConfigDict); unknown keys are a ValueError."""
    if not section:
      return cls()
    items = dict(section.items())
    known = {f.name for f in dataclasses.fields(cls)}
    for key in items:
      if key not in known:
        raise ValueError(
            f"config.model.lora.{key}: unknown key; expected one of " f"{sorted(known)}"
        )
    if isinstance(items.get("targets"), str):
      raise ValueError("config.model.lora.targets: expected a list of names, got a string")
    return cls(**items)


# ----------------------------------------------------------------------------- forward


def _split_spec(spec: str, n_in: int):
  lhs, rest = spec.split(",")
  w, out = rest.split("->")
  return lhs, w[:n_in], w[n_in:], out


def pack_4bit(values: jax.Array) -> jax.Array:
  """4-bit values (qwix's ``uint4`` nf4 codes or ``int4``) two per ``uint8`` on the last axis.

  Orbax (tensorstore) cannot store 4-bit dtypes, so the frozen base is kept packed: a
  training checkpoint holds it at 4 bits and ``dense`` unpacks one layer at a time.
  """
  if values.shape[-1] % 2:
    raise ValueError(f"4-bit packing needs an even last dim, got shape {values.shape}")
  nibbles = values.astype(jnp.int8).astype(jnp.uint8) & 0xF
  pairs = nibbles.reshape(values.shape[:-1] + (values.shape[-1] // 2, 2))
  return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_4bit(packed: jax.Array, qtype: str) -> jax.Array:
  """The inverse of :func:`pack_4bit`: ``uint4`` codes for nf4, ``int4`` for int4."""
  nibbles = jnp.stack([packed & 0xF, packed >> 4], axis=-1)
  nibbles = nibbles.reshape(packed.shape[:-1] + (packed.shape[-1] * 2,))
  if qtype == "nf4":
    return nibbles.astype(jnp.uint4)
  return ((nibbles.astype(jnp.int8) ^ 8) - 8).astype(jnp.int4)  # sign-extend the nibble


def base_weight(p: Mapping[str, jax.Array], name: str) -> jax.Array:
  """One layer's weight ``name`` from its scan slice: the Param, or the 4-bit base dequantised."""
  if name in p:
    return p[name]
  for qtype in QUANTIZE[1:]:
    if f"{name}_q_{qtype}" in p:
      import qwix  # heavy; only QLoRA models need it

      values = unpack_4bit(p[f"{name}_q_{qtype}"], qtype)
      q = qwix.QArray(values, p[f"{name}_qscale"], None, "nf4" if qtype == "nf4" else jnp.int4)
      return qwix.dequantize(q)
  raise KeyError(f"layer weight {name!r} not found")


def dense(name: str, x: jax.Array, p: Mapping[str, jax.Array], dt) -> jax.Array:
  """``x`` times layer weight ``name`` cast to ``dt`` (its einsum from :data:`TARGETS`), plus
  its adapter when the layer has one."""
  spec, n_in = TARGETS[name]
  y = jnp.einsum(spec, x, base_weight(p, name).astype(dt))
  a = p.get(name + "_lora_a")
  if a is None:
    return y
  lhs, w_in, w_out, out = _split_spec(spec, n_in)
  kept = "".join(ch for ch in lhs if ch not in w_in)
  xa = jnp.einsum(f"{lhs},{w_in}{_RANK}->{kept}{_RANK}", x, a.astype(dt))
  delta = jnp.einsum(f"{kept}{_RANK},{_RANK}{w_out}->{out}", xa, p[name + "_lora_b"].astype(dt))
  return y + (p["lora_scale"].astype(dt) * delta)


# ----------------------------------------------------------------------------- building


def _axes(var: nnx.Variable, ndim: int) -> Tuple[Optional[str], ...]:
  axes = var.get_metadata().get("logical_axes")
  return tuple(axes) if axes else (None,) * ndim


def _quantize(w: jax.Array, n_in: int, qtype: str):
  import qwix  # heavy; only QLoRA models need it

  contracted = n_in  # the last contracted dim (dims: layers, *in, *out)
  block = _BLOCK if w.shape[contracted] % _BLOCK == 0 else w.shape[contracted]
  channel = tuple(i for i in range(w.ndim) if i != contracted)
  return qwix.quantize(
      w,
      "nf4" if qtype == "nf4" else jnp.int4,
      channelwise_axes=channel,
      tiled_axes={contracted: block},
      scale_dtype=w.dtype,
  )


def apply_lora(model, cfg: LoraConfig, seed: int = 0):
  """Adds adapters (and the 4-bit base) to ``model``'s layer stack in place; returns it.

  Only the target layer weights change form: embeddings, norms and the LM head stay plain,
  frozen Params (train only :data:`LoraParam` with ``trainable=LoraParam``). Adapters are
  float32 master weights whatever ``param_dtype`` is (they are small; a bf16 base would
  otherwise round away most of each update), cast to the compute dtype in the forward.
  """
  if not cfg.enabled:
    return model
  layers = model.backbone.layers
  if hasattr(layers, "lora_scale"):
    raise ValueError("apply_lora: the model already has adapters")
  key = jax.random.key(seed)
  n_layers = model.config.num_layers
  for i, name in enumerate(cfg.targets):
    var = getattr(layers, name)
    w = var[...]
    n_in = TARGETS[name][1]
    axes = _axes(var, w.ndim)
    in_shape, out_shape = w.shape[1 : 1 + n_in], w.shape[1 + n_in :]
    bound = 1.0 / math.sqrt(math.prod(in_shape))
    a = jax.random.uniform(
        jax.random.fold_in(key, i), (n_layers, *in_shape, cfg.rank), jnp.float32, -bound, bound
    )
    setattr(layers, name + "_lora_a", LoraParam(a, logical_axes=(*axes[: 1 + n_in], None)))
    setattr(
        layers,
        name + "_lora_b",
        LoraParam(
            jnp.zeros((n_layers, cfg.rank, *out_shape), jnp.float32),
            logical_axes=(axes[0], None, *axes[1 + n_in :]),
        ),
    )
    if cfg.quantize_base != "none":
      q = _quantize(w, n_in, cfg.quantize_base)
      delattr(layers, name)
      setattr(
          layers,
          f"{name}_q_{cfg.quantize_base}",
          QuantizedBase(pack_4bit(q.qvalue), logical_axes=axes),
      )
      setattr(layers, f"{name}_qscale", QuantizedBase(q.scale, logical_axes=axes))
  layers.lora_scale = LoraScale(
      jnp.full((n_layers,), cfg.alpha / cfg.rank, jnp.float32), logical_axes=("layers",)
  )
  return model


def has_lora(model) -> bool:
  backbone = getattr(model, "backbone", None)
  return backbone is not None and hasattr(backbone.layers, "lora_scale")


def trainable_filter(model):
  """The nnx filter of what trains: the adapters of a LoRA model, else every Param."""
  return LoraParam if has_lora(model) else nnx.Param


def lora_reference(model):
  """The same model with its adapter disabled (scale 0): the frozen reference policy.

  The returned module shares every array with ``model`` (``nnx.merge`` wraps the same
  buffers); nothing is copied.
  """
  if not has_lora(model):
    raise ValueError("lora_reference: the model has no LoRA adapter")
  graphdef, state = nnx.split(model)
  ref = nnx.merge(graphdef, state)
  ref.backbone.layers.lora_scale = LoraScale(
      jnp.zeros_like(model.backbone.layers.lora_scale[...]), logical_axes=("layers",)
  )
  return ref


def merged_weight(layers, name: str) -> jax.Array:
  """``W + (alpha / r) A B`` for all layers (the dequantised base for QLoRA)."""
  flat = {k: v[...] for k, v in vars(layers).items() if isinstance(v, nnx.Variable)}
  spec, n_in = TARGETS[name]
  w = jax.vmap(lambda p: base_weight(p, name))(flat) if name not in flat else flat[name]
  if name + "_lora_a" not in flat:
    return w
  _, w_in, w_out, _ = _split_spec(spec, n_in)
  ab = jnp.einsum(
      f"l{w_in}{_RANK},l{_RANK}{w_out}->l{w_in}{w_out}",
      flat[name + "_lora_a"].astype(jnp.float32),
      flat[name + "_lora_b"].astype(jnp.float32),
  )
  scale = flat["lora_scale"].reshape((-1,) + (1,) * (ab.ndim - 1))
  return (w.astype(jnp.float32) + scale * ab).astype(w.dtype)


def merge_lora(model):
  """A plain ``DiffusionLM`` whose target weights are the merged ``W + (alpha/r) A B``.

  Export and checkpointing write this; attributes that tell export where the model came
  from (``hf_meta_json``, ``source_path``) are carried over.
  """
  if not has_lora(model):
    return model
  layers = model.backbone.layers
  config = model.config
  # The model's own class without adapters (apply_lora changes the instance, not the class).
  abstract = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  source = dict(nnx.to_flat_state(nnx.state(model)))
  flat = []
  for path, var in nnx.to_flat_state(state):
    if path[:2] == ("backbone", "layers") and path[2] in TARGETS:
      value = merged_weight(layers, path[2])
    else:
      value = source[path][...]
    flat.append((path, var.replace(jnp.asarray(value, var.get_value().dtype))))
  plain = nnx.merge(graphdef, nnx.from_flat_state(flat))
  for attr in ("hf_meta_json", "source_path"):
    if hasattr(model, attr):
      setattr(plain, attr, getattr(model, attr))
  return plain


__all__ = [
    "LoraConfig",
    "LoraParam",
    "LoraScale",
    "QuantizedBase",
    "TARGETS",
    "apply_lora",
    "dense",
    "has_lora",
    "lora_reference",
    "merge_lora",
    "merged_weight",
    "pack_4bit",
    "trainable_filter",
    "unpack_4bit",
]
