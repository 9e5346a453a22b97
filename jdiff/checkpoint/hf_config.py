"""Reading and writing each family's own ``config.json`` (docs/formats.md §Families, §Checkpoints).

LLaDA uses OLMo-style names (``d_model``, ``n_heads``, ...); Dream and SDAR use Qwen2/Qwen3
names. A stock Llama / Qwen2 / Qwen3 checkpoint can be loaded as a dLLM only when the
family is given explicitly (the A2D path), since its config says nothing about masks.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Tuple

from jdiff.checkpoint.safetensors_io import CheckpointError
from jdiff.models.config import ModelConfig

# (model_type lower-case, architecture) -> family
_KNOWN = {
    "llada": "llada",
    "llada_moe": None,
    "dream": "dream",
    "sdar": "sdar",
    "trado": "sdar",
}
_ARCHS = {"LLaDAModelLM": "llada", "DreamModel": "dream", "SDARForCausalLM": "sdar"}
# Stock AR families that share a family's layout; usable with an explicit family.
_AR_TWINS = {"llama": "llada", "qwen2": "dream", "qwen3": "sdar"}


def read_config_json(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint directory not found: {directory}")
  if not os.path.exists(path):
    raise CheckpointError(f"no config.json in {directory}")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: invalid JSON ({e})") from None


def detect_family(
    cfg: dict, family: Optional[str] = None, where: str = "config.json"
) -> Tuple[str, str]:
  """Returns (family, key naming scheme) where the scheme is 'llada' or 'hf'."""
  model_type = str(cfg.get("model_type", "")).lower()
  archs = cfg.get("architectures") or []
  detected = _KNOWN.get(model_type)
  for a in archs:
    detected = detected or _ARCHS.get(a)
  scheme = "llada" if (model_type == "llada" or "LLaDAModelLM" in archs) else "hf"
  if family is not None:
    if detected is not None and detected != family:
      raise CheckpointError(
          f"{where}: model_type={model_type!r} is family {detected!r}, "
          f"but family={family!r} was requested"
      )
    if detected is None and _AR_TWINS.get(model_type) is None:
      raise CheckpointError(f"{where}: model_type={model_type!r} cannot be loaded as {family!r}")
    return family, scheme
  if detected is None:
    hint = ""
    if model_type in _AR_TWINS:
      hint = (
          f"; it is an autoregressive {model_type} checkpoint: pass "
          f"family={_AR_TWINS[model_type]!r} (and mask/block settings) to load it as a dLLM"
      )
    raise CheckpointError(
        f"{where}: unsupported model_type={model_type!r} "
        f"architectures={archs}; supported: LLaDA (llada), Dream (Dream), "
        f"SDAR/TraDo (sdar){hint}"
    )
  return detected, scheme


def _first_int(value):
  if isinstance(value, (list, tuple)):
    return int(value[0]) if value else None
  return None if value is None else int(value)


def _rope_theta(cfg: dict, default: float) -> float:
  if "rope_theta" in cfg:
    return float(cfg["rope_theta"])
  params = cfg.get("rope_parameters") or {}
  return float(params.get("rope_theta", default))


def to_model_config(cfg: dict, family: str, scheme: str, **overrides) -> ModelConfig:
  """Builds a :class:`ModelConfig` from a family's config.json."""
  try:
    if scheme == "llada":
      d = int(cfg["d_model"])
      heads = int(cfg["n_heads"])
      kw = dict(
          vocab_size=int(cfg.get("embedding_size") or cfg["vocab_size"]),
          hidden_size=d,
          intermediate_size=int(cfg.get("mlp_hidden_size") or cfg["mlp_ratio"] * d),
          num_layers=int(cfg["n_layers"]),
          num_heads=heads,
          num_kv_heads=int(cfg.get("n_kv_heads") or heads),
          head_dim=d // heads,
          rope_theta=float(cfg.get("rope_theta", 10000.0)),
          rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
          qkv_bias=bool(cfg.get("include_bias") or cfg.get("include_qkv_bias")),
          tie_word_embeddings=bool(cfg.get("weight_tying", False)),
          max_position_embeddings=int(cfg.get("max_sequence_length", 4096)),
      )
    else:
      d = int(cfg["hidden_size"])
      heads = int(cfg["num_attention_heads"])
      kw = dict(
          vocab_size=int(cfg["vocab_size"]),
          hidden_size=d,
          intermediate_size=int(cfg["intermediate_size"]),
          num_layers=int(cfg["num_hidden_layers"]),
          num_heads=heads,
          num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
          head_dim=int(cfg.get("head_dim") or d // heads),
          rope_theta=_rope_theta(cfg, 10000.0),
          rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
          qkv_bias=family == "dream" or bool(cfg.get("attention_bias", False)),
          qk_norm=family == "sdar",
          tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
          max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
      )
  except KeyError as e:
    raise CheckpointError(
        f"config.json lacks the key {e.args[0]!r} needed for family " f"{family!r}"
    ) from None
  if cfg.get("hidden_act", cfg.get("activation_type", "silu")) not in ("silu", "swiglu"):
    raise CheckpointError(
        f"config.json: activation {cfg.get('hidden_act')!r} unsupported " "(only SiLU-gated MLPs)"
    )
  kw.update(
      family=family,
      mask_token_id=_first_int(cfg.get("mask_token_id")),
      eos_token_id=_first_int(cfg.get("eos_token_id")),
      pad_token_id=_first_int(cfg.get("pad_token_id")),
      bos_token_id=_first_int(cfg.get("bos_token_id")),
  )
  if family == "sdar":
    kw["block_size"] = int(cfg.get("block_size") or overrides.pop("block_size", 0) or 4)
  kw.update({k: v for k, v in overrides.items() if v is not None})
  return ModelConfig(**kw)


# The config.json keys that hold each ModelConfig field, per key naming scheme.
_FIELD_KEYS = {
    "llada": dict(
        vocab_size=("vocab_size", "embedding_size"),
        hidden_size=("d_model",),
        intermediate_size=("mlp_hidden_size",),
        num_layers=("n_layers",),
        num_heads=("n_heads",),
        num_kv_heads=("n_kv_heads",),
        rope_theta=("rope_theta",),
        rms_norm_eps=("rms_norm_eps",),
        qkv_bias=("include_qkv_bias",),
        tie_word_embeddings=("weight_tying",),
        max_position_embeddings=("max_sequence_length",),
    ),
    "hf": dict(
        vocab_size=("vocab_size",),
        hidden_size=("hidden_size",),
        intermediate_size=("intermediate_size",),
        num_layers=("num_hidden_layers",),
        num_heads=("num_attention_heads",),
        num_kv_heads=("num_key_value_heads",),
        head_dim=("head_dim",),
        rope_theta=("rope_theta",),
        rms_norm_eps=("rms_norm_eps",),
        qkv_bias=("attention_bias",),
        tie_word_embeddings=("tie_word_embeddings",),
        max_position_embeddings=("max_position_embeddings",),
        block_size=("block_size",),
    ),
}
SPECIAL_IDS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")


def _fresh_config(c: ModelConfig) -> dict:
  """A complete config.json for ``c`` when there is no source checkpoint to start from."""
  out = {}
  if c.family == "llada":
    out.update(
        model_type="llada",
        architectures=["LLaDAModelLM"],
        d_model=c.hidden_size,
        n_heads=c.num_heads,
        n_kv_heads=c.num_kv_heads,
        n_layers=c.num_layers,
        mlp_hidden_size=c.intermediate_size,
        vocab_size=c.vocab_size,
        embedding_size=c.vocab_size,
        rope_theta=c.rope_theta,
        rms_norm_eps=c.rms_norm_eps,
        max_sequence_length=c.max_position_embeddings,
        weight_tying=c.tie_word_embeddings,
        include_bias=False,
        include_qkv_bias=c.qkv_bias,
        activation_type="silu",
        block_type="llama",
        layer_norm_type="rms",
        rope=True,
        rope_full_precision=True,
        alibi=False,
        use_cache=False,
    )
  else:
    out.update(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        head_dim=c.head_dim,
        vocab_size=c.vocab_size,
        rope_theta=c.rope_theta,
        rms_norm_eps=c.rms_norm_eps,
        max_position_embeddings=c.max_position_embeddings,
        tie_word_embeddings=c.tie_word_embeddings,
        hidden_act="silu",
        use_sliding_window=False,
        attention_bias=c.qkv_bias and c.family != "dream",
        use_cache=False,
    )
    if c.family == "dream":
      out.update(model_type="Dream", architectures=["DreamModel"])
    else:
      out.update(model_type="sdar", architectures=["SDARForCausalLM"], block_size=c.block_size)
  out.update({k: getattr(c, k) for k in SPECIAL_IDS if getattr(c, k) is not None})
  return out


def _as_read(base: dict, family: str, scheme: str, imported_ids: Optional[dict]):
  """The ModelConfig an import of ``base`` produced, or None when ``base`` does not parse."""
  try:
    was = to_model_config(base, family, scheme)
  except (CheckpointError, ValueError, TypeError):
    return None
  if imported_ids:  # ids the import filled in from the tokenizer (or pad = EOS)
    was = was.replace(**{k: v for k, v in imported_ids.items() if k in SPECIAL_IDS})
  elif was.pad_token_id is None:
    was = was.replace(pad_token_id=was.eos_token_id)  # the importer's own default
  return was


def from_model_config(
    c: ModelConfig,
    torch_dtype: str = "bfloat16",
    base: Optional[dict] = None,
    scheme: Optional[str] = None,
    imported_ids: Optional[dict] = None,
) -> dict:
  """The family's own config.json for ``c``.

  With ``base`` (the config.json the model was imported from) the result is ``base`` with
  only the keys of fields that ``c`` changed rewritten: import -> export gives back the
  original fields unchanged, and nothing is added that the original model class would read
  differently (e.g. SDAR's ``pad_token_id``, which it uses as the embedding's
  ``padding_idx``). ``imported_ids`` are the special ids the import resolved, so ids it
  filled in (pad = EOS, mask from the tokenizer) are not written back as if they were edits.
  """
  fresh = _fresh_config(c)
  scheme = scheme or ("llada" if c.family == "llada" else "hf")
  was = None
  if base:
    try:
      base_family, base_scheme = detect_family(base, c.family)
    except CheckpointError:
      base_family, base_scheme = None, None
    if base_scheme == scheme:
      was = _as_read(base, base_family, scheme, imported_ids)
  if was is None:
    out = dict(base or {})
    out.update(fresh)
  else:
    out = dict(base)
    keys = dict(_FIELD_KEYS[scheme], **{k: (k,) for k in SPECIAL_IDS})
    for field, names in keys.items():
      if getattr(was, field) == getattr(c, field):
        continue
      for name in names:
        if name in fresh:
          out[name] = fresh[name]
        else:
          out.pop(name, None)
  uses_dtype = base and "dtype" in base and "torch_dtype" not in base
  out["dtype" if uses_dtype else "torch_dtype"] = torch_dtype
  return out
