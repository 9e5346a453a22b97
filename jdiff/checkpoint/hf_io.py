"""HF checkpoint directories <-> jdiff models and jdiff checkpoint directories.

A jdiff checkpoint is a directory with ``jdiff_config.json``, the parameters as safetensors
under jdiff's own names (e.g. ``backbone.layers.wq``, layers stacked) and the original
tokenizer files. Every conversion moves one parameter at a time: conversion never holds
more than the output plus one stacked parameter in memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from jdiff.checkpoint import hf_config, hf_mapping
from jdiff.checkpoint.safetensors_io import (
    INDEX_NAME,
    CheckpointError,
    CheckpointReader,
    write_checkpoint,
)
from jdiff.models.config import ModelConfig
from jdiff.models.lora import merge_lora
from jdiff.models.transformer import DiffusionLM, ValueModel

log = logging.getLogger(__name__)
JDIFF_CONFIG = "jdiff_config.json"
FORMAT_VERSION = 1
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5")
_OWN_FILES = ("config.json", JDIFF_CONFIG, INDEX_NAME)
_DTYPE_NAMES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
_IGNORED_HF_KEYS = ("rotary_emb.inv_freq",)


def is_jdiff_checkpoint(path: str) -> bool:
  return os.path.exists(os.path.join(path, JDIFF_CONFIG))


def _param_name(path: Tuple[str, ...]) -> str:
  return ".".join(path)


def _model_class(kind: str):
  if kind not in ("lm", "value"):
    raise CheckpointError(f"unknown model kind {kind!r}; expected 'lm' or 'value'")
  return DiffusionLM if kind == "lm" else ValueModel


def _copy_side_files(src: str, dst: str) -> None:
  """Tokenizer, generation config and remote-code files travel with the weights."""
  if not src or os.path.abspath(src) == os.path.abspath(dst):
    return
  for name in os.listdir(src):
    full = os.path.join(src, name)
    if (
        os.path.isfile(full)
        and not name.endswith(_WEIGHT_FILES)
        and name not in _OWN_FILES
        and not name.endswith(".index.json")
        and not name.endswith(".tmp")
    ):
      shutil.copy2(full, os.path.join(dst, name))


# ----------------------------------------------------------------------------- HF -> jdiff


class _HFSource:
  """Reads an HF checkpoint directory and yields jdiff parameters one at a time."""

  def __init__(self, path: str, family: Optional[str], overrides: dict):
    self.path = path
    self.raw_config = hf_config.read_config_json(path)
    self.family, self.scheme = hf_config.detect_family(
        self.raw_config, family, where=os.path.join(path, "config.json")
    )
    config = hf_config.to_model_config(self.raw_config, self.family, self.scheme, **overrides)
    self.config = _resolve_special_ids(config, path)
    self.reader = CheckpointReader(path)
    self.torch_dtype = str(
        self.raw_config.get("torch_dtype") or self.raw_config.get("dtype") or "bfloat16"
    )
    self.entries = {e.path: e for e in hf_mapping.entries(self.config, self.scheme)}
    self._check_keys()

  def _check_keys(self):
    expected = set()
    for e in self.entries.values():
      layers = range(self.config.num_layers) if e.stacked else [None]
      for i in layers:
        expected.add(e.hf.format(i=i))
    missing = sorted(expected - set(self.reader.keys()))
    if missing:
      raise CheckpointError(
          f"checkpoint {self.path} lacks {len(missing)} tensor(s) the "
          f"{self.family} model needs, e.g. {missing[:3]} (missing shard, or "
          f"the wrong family/config.json?)"
      )
    extra = [
        k for k in self.reader.keys() if k not in expected and not k.endswith(_IGNORED_HF_KEYS)
    ]
    if extra:
      log.warning(
          "ignoring %d tensor(s) not used by jdiff in %s, e.g. %s", len(extra), self.path, extra[:3]
      )

  def get(self, path: Tuple[str, ...], shape: Tuple[int, ...], dtype) -> np.ndarray:
    e = self.entries[path]
    want = hf_mapping.hf_shape(e, shape)
    layers = range(self.config.num_layers) if e.stacked else [None]
    out = np.empty(shape, dtype)
    for i in layers:
      key = e.hf.format(i=i)
      t = self.reader.get(key)
      if tuple(t.shape) != want:
        raise CheckpointError(
            f"{self.reader.file_of(key)}: tensor {key!r} has shape "
            f"{tuple(t.shape)}, expected {want} from config.json"
        )
      value = hf_mapping.to_jdiff(e, t, self.config)
      if i is None:
        out[...] = value
      else:
        out[i] = value
    return out


def _resolve_special_ids(config: ModelConfig, path: str) -> ModelConfig:
  """Fills mask/eos/pad ids missing from config.json from the tokenizer files."""
  updates = {}
  if config.mask_token_id is None or config.eos_token_id is None:
    tok = _try_tokenizer(path)
    if tok is not None:
      if config.mask_token_id is None:
        updates["mask_token_id"] = _tokenizer_mask_id(tok)
      if config.eos_token_id is None and tok.eos_token_id is not None:
        updates["eos_token_id"] = int(tok.eos_token_id)
  config = config.replace(**{k: v for k, v in updates.items() if v is not None})
  if config.mask_token_id is None:
    raise CheckpointError(
        f"{path}: no mask token id: config.json has no 'mask_token_id' and "
        "the tokenizer defines no mask token"
    )
  if config.eos_token_id is None:
    raise CheckpointError(f"{path}: no EOS token id in config.json or the tokenizer")
  if config.pad_token_id is None:
    config = config.replace(pad_token_id=config.eos_token_id)
  if not 0 <= config.mask_token_id < config.vocab_size:
    raise CheckpointError(
        f"{path}: mask_token_id={config.mask_token_id} outside the vocabulary "
        f"of {config.vocab_size}"
    )
  return config


_MASK_STRINGS = ("<|mdm_mask|>", "<|mask|>", "<|MASK|>", "<MASK>", "[MASK]")


def _tokenizer_mask_id(tok) -> Optional[int]:
  if getattr(tok, "mask_token_id", None) is not None:
    return int(tok.mask_token_id)
  vocab = tok.get_vocab()
  for s in _MASK_STRINGS:
    if s in vocab:
      return int(vocab[s])
  return None


def _try_tokenizer(path: str):
  try:
    return load_tokenizer(path)
  except CheckpointError:
    return None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def load_tokenizer(path: str):
  """``AutoTokenizer`` from local files only; a clear error when the directory has none.

  ``trust_remote_code=False``: the released LLaDA / Dream / SDAR checkpoints carry an
  ``auto_map`` naming their own Python code, and with the default (None) transformers asks
  on stdin whether to run it, which blocks or fails in a batch job. Their tokenizers are
  stock ones, so the built-in classes load them.
  """
  if not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
    raise CheckpointError(f"no tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {path}")
  import transformers  # heavy import kept local

  try:
    return transformers.AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=False
    )
  except Exception as e:  # transformers raises many types; keep the cause visible
    raise CheckpointError(f"could not load the tokenizer in {path}: {e}") from e


# ----------------------------------------------------------------------------- jdiff checkpoints


class _JdiffSource:

  def __init__(self, path: str):
    self.path = path
    with open(os.path.join(path, JDIFF_CONFIG)) as f:
      meta = json.load(f)
    if meta.get("format") != "jdiff":
      raise CheckpointError(f"{path}/{JDIFF_CONFIG} is not a jdiff checkpoint config")
    try:
      self.config = ModelConfig(**meta["config"])
    except TypeError as e:
      raise CheckpointError(f"{path}/{JDIFF_CONFIG}: bad model config ({e})") from None
    self.kind = meta.get("kind", "lm")
    self.hf = meta.get("hf", {})
    self.reader = CheckpointReader(path)

  def get(self, path: Tuple[str, ...], shape, dtype) -> np.ndarray:
    name = _param_name(path)
    t = self.reader.get(name)
    if tuple(t.shape) != tuple(shape):
      raise CheckpointError(
          f"{self.reader.file_of(name)}: {name!r} has shape {tuple(t.shape)}, "
          f"expected {tuple(shape)}"
      )
    return np.asarray(t, dtype)


def _build(config: ModelConfig, kind: str, source, mesh=None, rules=None):
  cls = _model_class(kind)
  abstract = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  shardings = None
  if mesh is not None:
    from jdiff.sharding.mesh import state_shardings

    shardings = dict(nnx.to_flat_state(state_shardings(state, mesh, rules)))
  flat = []
  for path, var in nnx.to_flat_state(state):
    spec = var.get_value()
    value = source(path, spec.shape, spec.dtype)
    if shardings is not None:
      arr = jax.device_put(value, shardings[path].get_value())  # a NamedSharding: not indexable
    else:
      arr = jnp.asarray(value)
    del value
    flat.append((path, var.replace(arr)))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def from_pretrained(
    path: str,
    *,
    family: Optional[str] = None,
    kind: Optional[str] = None,
    param_dtype: Optional[str] = None,
    dtype: Optional[str] = None,
    mesh=None,
    rules=None,
    **config_overrides,
):
  """Loads an HF checkpoint directory (LLaDA, Dream, SDAR/TraDo) or a jdiff checkpoint.

  ``param_dtype``/``dtype`` set master-weight and compute dtypes (default float32 master
  weights; compute dtype bfloat16 for HF checkpoints stored in bf16). With ``mesh``, each
  parameter is placed directly into its sharding from the rules table.
  """
  if not os.path.isdir(path):
    raise CheckpointError(f"checkpoint directory not found: {path}")
  if is_jdiff_checkpoint(path):
    src = _JdiffSource(path)
    config = src.config
    kind = kind or src.kind
  else:
    src = _HFSource(path, family, config_overrides)
    config = src.config
    if dtype is None:
      dtype = "float32" if src.torch_dtype == "float32" else "bfloat16"
    kind = kind or "lm"
  config = config.replace(
      **{k: v for k, v in dict(param_dtype=param_dtype, dtype=dtype).items() if v is not None}
  )
  if is_jdiff_checkpoint(path) and config_overrides:
    config = config.replace(**config_overrides)
  if kind == "value" and not is_jdiff_checkpoint(path):
    # A fresh value model: the policy backbone plus a zero head (TraceRL §7).
    lm_src = src

    def source(p, shape, dt):
      if p == ("value_head",):
        return np.zeros(shape, dt)
      return lm_src.get(p, shape, dt)

  else:
    source = src.get
  model = _build(config, kind, source, mesh, rules)
  model.source_path = os.path.abspath(path)  # tokenizer lookup for scripts
  # What export needs to write the checkpoint back as it came (names, dtype, config fields).
  # Kept as a JSON string: module attributes end up in the (hashed) graphdef.
  model.hf_meta_json = json.dumps(
      src.hf if isinstance(src, _JdiffSource) else _hf_meta(src, src.torch_dtype)
  )
  return model


def _hf_meta(src: "_HFSource", torch_dtype: str) -> dict:
  # The ids as imported let export tell ids the import filled in from ids a user changed.
  return {
      "scheme": src.scheme,
      "torch_dtype": torch_dtype,
      "config_json": src.raw_config,
      "special_ids": {k: getattr(src.config, k) for k in hf_config.SPECIAL_IDS},
  }


def save_jdiff(
    model,
    out_dir: str,
    *,
    tokenizer_dir: Optional[str] = None,
    hf_meta: Optional[dict] = None,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
  """Writes ``model`` as a jdiff checkpoint directory (a LoRA model's adapters merged)."""
  kind = "value" if isinstance(model, ValueModel) else "lm"
  model = merge_lora(model)
  state = nnx.state(model)
  specs = []
  for path, var in nnx.to_flat_state(state):
    arr = var[...]
    specs.append(
        (
            _param_name(path),
            tuple(arr.shape),
            np.dtype(arr.dtype),
            (lambda a=arr: np.asarray(jax.device_get(a))),
        )
    )
  _write_jdiff(out_dir, model.config, kind, specs, hf_meta or {}, tokenizer_dir, max_shard_bytes)


def _write_jdiff(out_dir, config, kind, specs, hf_meta, tokenizer_dir, max_shard_bytes):
  os.makedirs(out_dir, exist_ok=True)
  write_checkpoint(out_dir, specs, max_shard_bytes=max_shard_bytes, metadata={"format": "jdiff"})
  meta = {
      "format": "jdiff",
      "version": FORMAT_VERSION,
      "kind": kind,
      "config": dataclasses.asdict(config),
      "hf": hf_meta,
  }
  tmp = os.path.join(out_dir, JDIFF_CONFIG + ".tmp")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(out_dir, JDIFF_CONFIG))  # written last: marks completion
  _copy_side_files(tokenizer_dir, out_dir)


def import_hf(
    hf_dir: str,
    out_dir: str,
    *,
    family: Optional[str] = None,
    param_dtype: Optional[str] = None,
    max_shard_bytes: int = 5 * 2**30,
    **config_overrides,
) -> ModelConfig:
  """Streams an HF checkpoint into a jdiff checkpoint, one stacked parameter at a time.

  Parameters keep the checkpoint's dtype unless ``param_dtype`` is given, so import ->
  export -> import is bit-identical.
  """
  src = _HFSource(hf_dir, family, config_overrides)
  stored = src.torch_dtype if src.torch_dtype in _DTYPE_NAMES else "float32"
  pdt = param_dtype or stored
  config = src.config.replace(
      param_dtype=pdt, dtype="float32" if stored == "float32" else "bfloat16"
  )
  abstract = nnx.eval_shape(lambda: DiffusionLM(config, rngs=nnx.Rngs(0)))
  specs = []
  for path, var in nnx.to_flat_state(nnx.state(abstract)):
    shape, dt = tuple(var.get_value().shape), np.dtype(var.get_value().dtype)
    specs.append((_param_name(path), shape, dt, (lambda p=path, s=shape, d=dt: src.get(p, s, d))))
  hf_meta = _hf_meta(src, stored)
  _write_jdiff(out_dir, config, "lm", specs, hf_meta, hf_dir, max_shard_bytes)
  return config


# ----------------------------------------------------------------------------- jdiff -> HF


def _export_specs(
    config: ModelConfig,
    scheme: str,
    get: Callable[[Tuple[str, ...]], np.ndarray],
    shapes: Dict[Tuple[str, ...], Tuple[int, ...]],
    out_dtype,
) -> list:
  specs = []
  for e in hf_mapping.entries(config, scheme):
    shape = shapes[e.path]
    hf_s = hf_mapping.hf_shape(e, shape)
    layers = range(config.num_layers) if e.stacked else [None]
    for i in layers:

      def produce(e=e, i=i):
        x = get(e.path)
        x = x if i is None else x[i]
        return np.asarray(hf_mapping.to_hf(e, x), out_dtype)

      specs.append((e.hf.format(i=i), hf_s, np.dtype(out_dtype), produce))
  return specs


def _one_at_a_time(fetch):
  """Keeps only the most recently fetched parameter on the host (layers are read in order)."""
  last = {}

  def get(path):
    if path not in last:
      last.clear()
      last[path] = fetch(path)
    return last[path]

  return get


def export_hf(
    source,
    out_dir: str,
    *,
    torch_dtype: Optional[str] = None,
    scheme: Optional[str] = None,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
  """Writes an HF checkpoint directory with the family's original names and config.json.

  ``source`` is a jdiff checkpoint directory or a ``DiffusionLM`` (a LoRA model is written
  with its adapters merged into the base weights).
  """
  if isinstance(source, str):
    if not is_jdiff_checkpoint(source):
      raise CheckpointError(f"{source} is not a jdiff checkpoint (no {JDIFF_CONFIG})")
    src = _JdiffSource(source)
    if src.kind != "lm":
      raise CheckpointError(f"{source}: only language models export to HF (kind={src.kind!r})")
    config, hf_meta, tok_dir = src.config, src.hf, source
    shapes = {tuple(k.split(".")): src.reader.shape(k) for k in src.reader.keys()}
    get = lambda p: src.reader.get(_param_name(p))  # noqa: E731
  else:
    model = merge_lora(source)
    config = model.config
    hf_meta = json.loads(getattr(model, "hf_meta_json", None) or "{}")
    tok_dir = getattr(model, "source_path", None)
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    shapes = {p: tuple(v[...].shape) for p, v in flat.items()}
    get = _one_at_a_time(lambda p: np.asarray(jax.device_get(flat[p][...])))
  scheme = scheme or hf_meta.get("scheme") or ("llada" if config.family == "llada" else "hf")
  torch_dtype = torch_dtype or hf_meta.get("torch_dtype") or "bfloat16"
  if torch_dtype not in _DTYPE_NAMES:
    raise CheckpointError(f"torch_dtype={torch_dtype!r}; expected one of {sorted(_DTYPE_NAMES)}")
  os.makedirs(out_dir, exist_ok=True)
  specs = _export_specs(config, scheme, get, shapes, _DTYPE_NAMES[torch_dtype])
  write_checkpoint(out_dir, specs, max_shard_bytes=max_shard_bytes, metadata={"format": "pt"})
  cfg_json = hf_config.from_model_config(
      config,
      torch_dtype,
      hf_meta.get("config_json"),
      scheme=scheme,
      imported_ids=hf_meta.get("special_ids"),
  )
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(cfg_json, f, indent=2)
  _copy_side_files(tok_dir, out_dir)
