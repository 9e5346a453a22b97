"""Model configuration for the three dLLM families, with presets for the real sizes.

One backbone serves all families; the family only decides biases, qk-norm, the native
attention pattern and whether logits are shifted (docs/formats.md §Families).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from jdiff.registry import Registry

FAMILIES = ("llada", "dream", "sdar")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("dense", "chunked")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float
  rms_norm_eps: float
  qkv_bias: bool = False
  qk_norm: bool = False
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 4096
  mask_token_id: Optional[int] = None
  eos_token_id: Optional[int] = None
  pad_token_id: Optional[int] = None
  bos_token_id: Optional[int] = None
  block_size: Optional[int] = None  # sdar only: blocks at absolute positions 0, B, 2B, ...
  param_dtype: str = "float32"  # master weights
  dtype: str = "float32"  # compute dtype; norms, softmax and logits stay float32
  remat: str = "none"  # rematerialisation policy of one layer for training
  # "chunked": training/scoring forwards given a MaskSpec (or no mask) attend tile by tile
  # (jdiff.models.chunked_attention), with no [L, L] array; cached decoding stays dense.
  attention_impl: str = "dense"
  attention_chunk_q: int = 512
  attention_chunk_k: int = 512

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"ModelConfig.family={self.family!r}; expected one of {FAMILIES}")
    for name in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "head_dim",
    ):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"ModelConfig.num_heads={self.num_heads} is not a multiple of "
          f"num_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even for RoPE")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"ModelConfig.remat={self.remat!r}; expected one of {REMAT_POLICIES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
          f"ModelConfig.attention_impl={self.attention_impl!r}; expected one of "
          f"{ATTENTION_IMPLS}"
      )
    for name in ("attention_chunk_q", "attention_chunk_k"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {DTYPES}")
    if self.family == "sdar" and (self.block_size is None or self.block_size <= 0):
      raise ValueError("ModelConfig.block_size must be a positive int for family 'sdar'")

  @property
  def shift_logits(self) -> bool:
    """Dream is AR-initialised: the logit at position i predicts token i+1."""
    return self.family == "dream"

  @property
  def block_causal(self) -> bool:
    return self.family == "sdar"

  def replace(self, **kwargs) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  def num_params(self) -> int:
    d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
    per_layer = d * self.num_heads * hd * 2 + d * self.num_kv_heads * hd * 2 + 3 * d * f + 2 * d
    if self.qkv_bias:
      per_layer += (self.num_heads + 2 * self.num_kv_heads) * hd
    if self.qk_norm:
      per_layer += 2 * hd
    head = 0 if self.tie_word_embeddings else self.vocab_size * d
    return self.vocab_size * d + self.num_layers * per_layer + d + head

  def flops_per_token(self, seq_len: int) -> float:
    """Forward FLOPs per token: 2 per weight multiply-add plus attention scores and values."""
    embed = self.vocab_size * self.hidden_size
    # The input embedding is a gather; a tied head still does a vocab x hidden matmul.
    matmul = self.num_params() - embed + (embed if self.tie_word_embeddings else 0)
    matmul *= 2
    attn = 4 * self.num_layers * self.num_heads * self.head_dim * seq_len
    return float(matmul + attn)


def _llada(**kw) -> ModelConfig:
  base = dict(
      family="llada",
      rope_theta=500000.0,
      rms_norm_eps=1e-5,
      mask_token_id=126336,
      eos_token_id=126081,
      pad_token_id=126081,
      bos_token_id=126080,
  )
  base.update(kw)
  return ModelConfig(**base)


def _dream(**kw) -> ModelConfig:
  base = dict(
      family="dream",
      rope_theta=1000000.0,
      rms_norm_eps=1e-6,
      qkv_bias=True,
      mask_token_id=151666,
      eos_token_id=151643,
      pad_token_id=151643,
  )
  base.update(kw)
  return ModelConfig(**base)


def _sdar(**kw) -> ModelConfig:
  base = dict(
      family="sdar",
      rope_theta=1000000.0,
      rms_norm_eps=1e-6,
      qk_norm=True,
      mask_token_id=151669,
      eos_token_id=151643,
      pad_token_id=151643,
      bos_token_id=151643,
      block_size=4,
      max_position_embeddings=32768,
  )
  base.update(kw)
  return ModelConfig(**base)


_BF16 = dict(param_dtype="float32", dtype="bfloat16")

_PRESETS = {
    "llada_8b": lambda: _llada(
        vocab_size=126464,
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=32,
        num_heads=32,
        num_kv_heads=32,
        head_dim=128,
        **_BF16,
    ),
    "dream_7b": lambda: _dream(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        max_position_embeddings=131072,
        **_BF16,
    ),
    # SDAR-1.7B's tie flag is unconfirmed (docs/formats.md B1); from_pretrained reads
    # the real value from config.json.
    "sdar_1p7b": lambda: _sdar(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        **_BF16,
    ),
    "sdar_4b": lambda: _sdar(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        **_BF16,
    ),
    "sdar_8b": lambda: _sdar(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        **_BF16,
    ),
    # Tiny models for unit tests: GQA (4 query heads over 2 kv heads), float32 throughout.
    "tiny_llada": lambda: _llada(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        mask_token_id=3,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=2,
    ),
    "tiny_dream": lambda: _dream(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        mask_token_id=3,
        eos_token_id=1,
        pad_token_id=1,
    ),
    "tiny_sdar": lambda: _sdar(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        mask_token_id=3,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=1,
    ),
    # The embedded default's policy (~0.4M parameters with a character vocabulary).
    "mini_sdar": lambda: _sdar(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=384,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mask_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
        max_position_embeddings=256,
    ),
    "mini_llada": lambda: _llada(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=384,
        num_layers=3,
        num_heads=4,
        num_kv_heads=4,
        head_dim=32,
        mask_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
        bos_token_id=None,
        max_position_embeddings=256,
    ),
    "mini_dream": lambda: _dream(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=384,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        mask_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
        max_position_embeddings=256,
    ),
    # ~30M parameters: the "small" size of the benchmarks.
    "small_sdar": lambda: _sdar(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1408,
        num_layers=6,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        mask_token_id=3,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=1,
    ),
    "small_llada": lambda: _llada(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1408,
        num_layers=6,
        num_heads=8,
        num_kv_heads=8,
        head_dim=64,
        mask_token_id=3,
        eos_token_id=1,
        pad_token_id=1,
        bos_token_id=2,
    ),
}
_PRESETS["trado_4b"] = _PRESETS["sdar_4b"]
_PRESETS["trado_8b"] = _PRESETS["sdar_8b"]
PRESETS = Registry("model preset")  # name -> () -> ModelConfig
for _name, _factory in _PRESETS.items():
  PRESETS.register(_name, _factory)
del _name, _factory, _PRESETS


def preset(name: str, **overrides) -> ModelConfig:
  """A named preset, optionally with fields replaced (e.g. ``dtype='float32'``)."""
  cfg = PRESETS.get(name)()
  return cfg.replace(**overrides) if overrides else cfg
