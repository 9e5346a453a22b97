"""Parameter name tables: HF checkpoint keys <-> jdiff state paths, with the transforms.

PyTorch ``Linear`` weights are ``[out, in]``; jdiff kernels are ``[in, ...]`` with heads
split out, and layer parameters are stacked on a leading axis. Each entry below says how to
go one way; :func:`to_jdiff` and :func:`to_hf` are exact inverses (transposes/reshapes only).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

import numpy as np

from jdiff.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Entry:
  path: Tuple[str, ...]  # jdiff state path, e.g. ("backbone", "layers", "wq")
  hf: str  # HF key; "{i}" is the layer index for stacked parameters
  kind: str  # copy | linear | heads_out | heads_in | bias_heads
  heads: Optional[str] = None  # "num_heads" or "num_kv_heads" for head-split kinds

  @property
  def stacked(self) -> bool:
    return "{i}" in self.hf


_HF_NAMES = dict(
    embed="model.embed_tokens.weight",
    final_norm="model.norm.weight",
    lm_head="lm_head.weight",
    attn_norm="model.layers.{i}.input_layernorm.weight",
    wq="model.layers.{i}.self_attn.q_proj.weight",
    wk="model.layers.{i}.self_attn.k_proj.weight",
    wv="model.layers.{i}.self_attn.v_proj.weight",
    wo="model.layers.{i}.self_attn.o_proj.weight",
    bq="model.layers.{i}.self_attn.q_proj.bias",
    bk="model.layers.{i}.self_attn.k_proj.bias",
    bv="model.layers.{i}.self_attn.v_proj.bias",
    q_norm="model.layers.{i}.self_attn.q_norm.weight",
    k_norm="model.layers.{i}.self_attn.k_norm.weight",
    mlp_norm="model.layers.{i}.post_attention_layernorm.weight",
    w_gate="model.layers.{i}.mlp.gate_proj.weight",
    w_up="model.layers.{i}.mlp.up_proj.weight",
    w_down="model.layers.{i}.mlp.down_proj.weight",
)
# LLaDA (OLMo-derived) names; ff_proj is the gate (SiLU side), ff_out the down projection.
_LLADA_NAMES = dict(
    embed="model.transformer.wte.weight",
    final_norm="model.transformer.ln_f.weight",
    lm_head="model.transformer.ff_out.weight",
    attn_norm="model.transformer.blocks.{i}.attn_norm.weight",
    wq="model.transformer.blocks.{i}.q_proj.weight",
    wk="model.transformer.blocks.{i}.k_proj.weight",
    wv="model.transformer.blocks.{i}.v_proj.weight",
    wo="model.transformer.blocks.{i}.attn_out.weight",
    bq="model.transformer.blocks.{i}.q_proj.bias",
    bk="model.transformer.blocks.{i}.k_proj.bias",
    bv="model.transformer.blocks.{i}.v_proj.bias",
    mlp_norm="model.transformer.blocks.{i}.ff_norm.weight",
    w_gate="model.transformer.blocks.{i}.ff_proj.weight",
    w_up="model.transformer.blocks.{i}.up_proj.weight",
    w_down="model.transformer.blocks.{i}.ff_out.weight",
)
_KINDS = dict(
    embed=("copy", None),
    final_norm=("copy", None),
    lm_head=("linear", None),
    attn_norm=("copy", None),
    mlp_norm=("copy", None),
    q_norm=("copy", None),
    k_norm=("copy", None),
    wq=("heads_out", "num_heads"),
    wk=("heads_out", "num_kv_heads"),
    wv=("heads_out", "num_kv_heads"),
    wo=("heads_in", "num_heads"),
    bq=("bias_heads", "num_heads"),
    bk=("bias_heads", "num_kv_heads"),
    bv=("bias_heads", "num_kv_heads"),
    w_gate=("linear", None),
    w_up=("linear", None),
    w_down=("linear", None),
)


def entries(config: ModelConfig, scheme: str = "hf", prefix: Tuple[str, ...] = ()) -> List[Entry]:
  """The name table for a model; ``prefix`` is the path of the backbone's owner."""
  names = _LLADA_NAMES if scheme == "llada" else _HF_NAMES
  wanted = ["embed", "attn_norm", "wq", "wk", "wv"]
  if config.qkv_bias:
    wanted += ["bq", "bk", "bv"]
  if config.qk_norm:
    if scheme == "llada":
      raise ValueError("LLaDA key names have no qk-norm parameters")
    wanted += ["q_norm", "k_norm"]
  wanted += ["wo", "mlp_norm", "w_gate", "w_up", "w_down", "final_norm"]
  out = []
  for key in wanted:
    kind, heads = _KINDS[key]
    if key in ("embed", "final_norm"):
      path = prefix + ("backbone", key)
    else:
      path = prefix + ("backbone", "layers", key)
    out.append(Entry(path, names[key], kind, heads))
  if not config.tie_word_embeddings:
    out.append(Entry(prefix + ("lm_head",), names["lm_head"], "linear"))
  return out


def to_jdiff(entry: Entry, hf: np.ndarray, config: ModelConfig) -> np.ndarray:
  """One HF tensor (one layer's, for stacked entries) -> jdiff layout."""
  hd = config.head_dim
  if entry.kind == "copy":
    return hf
  if entry.kind == "linear":
    return hf.T
  n = getattr(config, entry.heads)
  if entry.kind == "heads_out":  # [n*hd, d] -> [d, n, hd]
    return hf.T.reshape(hf.shape[1], n, hd)
  if entry.kind == "heads_in":  # [d, n*hd] -> [n, hd, d]
    return hf.T.reshape(n, hd, hf.shape[0])
  if entry.kind == "bias_heads":  # [n*hd] -> [n, hd]
    return hf.reshape(n, hd)
  raise ValueError(entry.kind)


def to_hf(entry: Entry, x: np.ndarray) -> np.ndarray:
  """Inverse of :func:`to_jdiff` for one (unstacked) tensor."""
  if entry.kind == "copy":
    return x
  if entry.kind == "linear":
    return x.T
  if entry.kind == "heads_out":  # [d, n, hd] -> [n*hd, d]
    return x.reshape(x.shape[0], -1).T
  if entry.kind == "heads_in":  # [n, hd, d] -> [d, n*hd]
    return x.reshape(-1, x.shape[-1]).T
  if entry.kind == "bias_heads":
    return x.reshape(-1)
  raise ValueError(entry.kind)


def hf_shape(entry: Entry, jdiff_shape: Tuple[int, ...]) -> Tuple[int, ...]:
  """The HF tensor shape of one layer's slice of a jdiff parameter."""
  s = tuple(jdiff_shape[1:]) if entry.stacked else tuple(jdiff_shape)
  if entry.kind == "copy":
    return s
  if entry.kind == "linear":
    return s[::-1]
  if entry.kind == "heads_out":
    return (s[1] * s[2], s[0])
  if entry.kind == "heads_in":
    return (s[2], s[0] * s[1])
  return (s[0] * s[1],)
