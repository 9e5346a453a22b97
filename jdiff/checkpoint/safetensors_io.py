"""Safetensors reading and writing, tensor by tensor.

Reading memory-maps each file and hands out one tensor at a time, so converting an 8B
checkpoint never holds two copies of it. Writing streams tensors into shards with an HF
index (``model.safetensors.index.json``). bfloat16 is carried through ``ml_dtypes``.
The format (8-byte little-endian header size, JSON header, raw little-endian data) is the
published safetensors specification.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class CheckpointError(ValueError):
  """A checkpoint directory or file is missing, truncated or inconsistent."""


def _read_header(path: str) -> Tuple[dict, int]:
  try:
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise CheckpointError(f"{path}: not a safetensors file (shorter than 8 bytes)")
      (n,) = struct.unpack("<Q", raw)
      if n > os.path.getsize(path) - 8:
        raise CheckpointError(f"{path}: header size {n} exceeds the file size (truncated file?)")
      header = json.loads(f.read(n))
  except FileNotFoundError:
    raise CheckpointError(f"safetensors file not found: {path}") from None
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
  return header, 8 + n


class SafetensorsFile:
  """One memory-mapped safetensors file."""

  def __init__(self, path: str):
    self.path = path
    header, self._data_start = _read_header(path)
    self.metadata = header.pop("__metadata__", None) or {}
    self._entries = header
    size = os.path.getsize(path)
    for name, e in header.items():
      if e["dtype"] not in _DTYPES:
        raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {e['dtype']}")
      end = self._data_start + e["data_offsets"][1]
      if end > size:
        raise CheckpointError(
            f"{path}: tensor {name!r} extends past the end of the file "
            f"({end} > {size} bytes; truncated file?)"
        )
    self._map = np.memmap(path, dtype=np.uint8, mode="r") if size > self._data_start else None

  def keys(self) -> List[str]:
    return list(self._entries)

  def shape(self, name: str) -> Tuple[int, ...]:
    return tuple(self._entries[name]["shape"])

  def dtype(self, name: str) -> np.dtype:
    return _DTYPES[self._entries[name]["dtype"]]

  def get(self, name: str) -> np.ndarray:
    """A read-only view into the mapped file (no copy)."""
    e = self._entries[name]
    begin, end = e["data_offsets"]
    dtype = _DTYPES[e["dtype"]]
    if end == begin:
      return np.zeros(e["shape"], dtype)
    raw = self._map[self._data_start + begin : self._data_start + end]
    return raw.view(dtype).reshape(e["shape"])


class CheckpointReader:
  """All tensors of a checkpoint directory: one ``model.safetensors`` or an indexed set."""

  def __init__(self, directory: str):
    self.directory = directory
    index_path = os.path.join(directory, INDEX_NAME)
    self._files: Dict[str, SafetensorsFile] = {}
    self._where: Dict[str, str] = {}
    if os.path.exists(index_path):
      try:
        with open(index_path) as f:
          weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index_path}: unreadable index ({e!r})") from None
      for shard in sorted(set(weight_map.values())):
        path = os.path.join(directory, shard)
        if not os.path.exists(path):
          raise CheckpointError(
              f"{index_path} lists shard {shard!r}, which is missing from " f"{directory}"
          )
        self._files[shard] = SafetensorsFile(path)
      for name, shard in weight_map.items():
        if name not in self._files[shard].keys():
          raise CheckpointError(f"{index_path} maps {name!r} to {shard!r}, which lacks it")
        self._where[name] = shard
    else:
      names = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
      if not names:
        raise CheckpointError(f"no *.safetensors files (and no {INDEX_NAME}) in {directory}")
      for shard in names:
        self._files[shard] = SafetensorsFile(os.path.join(directory, shard))
        for name in self._files[shard].keys():
          self._where[name] = shard

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def keys(self) -> List[str]:
    return list(self._where)

  def file_of(self, name: str) -> str:
    return os.path.join(self.directory, self._where[name])

  def shape(self, name: str) -> Tuple[int, ...]:
    return self._files[self._where[self._require(name)]].shape(name)

  def dtype(self, name: str) -> np.dtype:
    return self._files[self._where[self._require(name)]].dtype(name)

  def get(self, name: str) -> np.ndarray:
    return self._files[self._where[self._require(name)]].get(name)

  def _require(self, name: str) -> str:
    if name not in self._where:
      raise CheckpointError(f"tensor {name!r} not found in checkpoint {self.directory}")
    return name


# A tensor to write: name, shape, dtype, and a function producing its value when needed.
TensorSpec = Tuple[str, Tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def _nbytes(spec: TensorSpec) -> int:
  return int(np.prod(spec[1], dtype=np.int64)) * np.dtype(spec[2]).itemsize


def _write_file(path: str, specs: Sequence[TensorSpec], metadata: Optional[dict]) -> None:
  header, offset = {}, 0
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  for name, shape, dtype, _ in specs:
    dtype = np.dtype(dtype)
    if dtype not in _NAMES:
      raise CheckpointError(f"cannot write tensor {name!r} of dtype {dtype} to safetensors")
    n = _nbytes((name, shape, dtype, None))
    header[name] = {
        "dtype": _NAMES[dtype],
        "shape": list(shape),
        "data_offsets": [offset, offset + n],
    }
    offset += n
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for name, shape, dtype, produce in specs:
      arr = np.ascontiguousarray(np.asarray(produce(), dtype=dtype))
      if arr.shape != tuple(shape):
        raise CheckpointError(f"tensor {name!r}: produced shape {arr.shape}, declared {shape}")
      f.write(arr.tobytes())
      del arr
  os.replace(tmp, path)  # never leave a half-written shard under the final name


def write_checkpoint(
    directory: str,
    specs: Iterable[TensorSpec],
    *,
    max_shard_bytes: int = 5 * 2**30,
    metadata: Optional[dict] = None,
    prefix: str = "model",
) -> List[str]:
  """Writes tensors as ``{prefix}.safetensors`` or shards plus an index; returns file names."""
  specs = list(specs)
  shards: List[List[TensorSpec]] = [[]]
  size = 0
  for spec in specs:
    n = _nbytes(spec)
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(spec)
    size += n
  os.makedirs(directory, exist_ok=True)
  if len(shards) == 1:
    names = [f"{prefix}.safetensors"]
  else:
    names = [f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  for name, shard in zip(names, shards):
    _write_file(os.path.join(directory, name), shard, metadata)
  if len(shards) > 1:
    index = {
        "metadata": {"total_size": sum(_nbytes(s) for s in specs)},
        "weight_map": {s[0]: name for name, shard in zip(names, shards) for s in shard},
    }
    tmp = os.path.join(directory, f"{prefix}.safetensors.index.json.tmp")
    with open(tmp, "w") as f:
      json.dump(index, f, indent=2)
    os.replace(tmp, os.path.join(directory, f"{prefix}.safetensors.index.json"))
  return names
