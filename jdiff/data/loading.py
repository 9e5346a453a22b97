"""Local dataset loading, field mapping, chat templating and left padding.

Only local data is supported: jsonl / json / parquet / csv files, a directory
of such files, a ``datasets.save_to_disk`` directory, or an in-memory
``datasets.Dataset`` / ``DatasetDict`` / list of dicts.  Nothing is ever
fetched from the Hugging Face Hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

Row = Dict[str, Any]
FieldSource = Union[str, Callable[[Row], Any]]

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def jsonl_objects(path: str, error: type = ValueError) -> Iterator[Tuple[int, dict]]:
  """``(line number, object)`` for each non-blank line of a JSONL file; a line that is not
  valid JSON or not a JSON object raises ``error`` naming the file and line."""
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise error(f"{path} line {n}: not valid JSON ({e})") from None
      if not isinstance(row, dict):
        raise error(f"{path} line {n}: expected a JSON object, got " f"{type(row).__name__}")
      yield n, row


def _builder_for(path: Path) -> str:
  suffix = path.suffix.lower()
  if suffix not in _BUILDERS:
    raise ValueError(f"unsupported data file {str(path)!r}: expected one of {sorted(_BUILDERS)}")
  return _BUILDERS[suffix]


def _pick_split(dataset_dict, split: Optional[str], source: str):
  """Choose a split of a DatasetDict: ``split``, else 'train', else the only one."""
  names = list(dataset_dict.keys())
  if split is not None:
    if split not in dataset_dict:
      raise ValueError(f"split {split!r} not found in {source}; available splits: {names}")
    return dataset_dict[split]
  if "train" in dataset_dict:
    return dataset_dict["train"]
  if len(names) == 1:
    return dataset_dict[names[0]]
  raise ValueError(f"{source} has several splits {names}; pass split=...")


def _load_files(files: Sequence[Path]):
  import datasets

  builders = {_builder_for(f) for f in files}
  if len(builders) != 1:
    raise ValueError(f"mixed data file formats {sorted(builders)} in {[str(f) for f in files]}")
  return datasets.load_dataset(builders.pop(), data_files=[str(f) for f in files], split="train")


def _load_directory(path: Path, split: Optional[str]):
  import datasets

  if any((path / m).exists() for m in _DISK_MARKERS):
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
      return _pick_split(loaded, split, str(path))
    return loaded
  files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _BUILDERS)
  if not files:
    raise ValueError(
        f"directory {str(path)!r} is neither a save_to_disk dataset nor contains "
        f"data files with suffixes {sorted(_BUILDERS)}"
    )
  if split is not None:
    chosen = [p for p in files if p.stem == split or p.stem.startswith(split + "-")]
    if not chosen:
      raise ValueError(
          f"no data file for split {split!r} in {str(path)!r}; files: {[p.name for p in files]}"
      )
    files = chosen
  return _load_files(files)


def _to_rows(path_or_dataset: Any, split: Optional[str]) -> Tuple[Any, str]:
  """Resolve the input to a ``datasets.Dataset`` or list of dicts, plus a label."""
  if isinstance(path_or_dataset, (str, os.PathLike)):
    path = Path(path_or_dataset).expanduser()
    if not path.exists():
      raise FileNotFoundError(
          f"{str(path_or_dataset)!r} is not an existing local path. jdiff loads local "
          "files only (jsonl/json/parquet/csv or a datasets.save_to_disk directory); "
          "no Hugging Face Hub downloads are allowed — download/convert the data "
          "beforehand and pass its local path."
      )
    if path.is_dir():
      return _load_directory(path, split), str(path)
    return _load_files([path]), str(path)
  try:
    import datasets
  except ImportError:  # pragma: no cover - datasets is a hard dependency
    datasets = None
  if datasets is not None:
    if isinstance(path_or_dataset, datasets.DatasetDict):
      return _pick_split(path_or_dataset, split, "the given DatasetDict"), "DatasetDict"
    if isinstance(path_or_dataset, datasets.Dataset):
      return path_or_dataset, "Dataset"
  if isinstance(path_or_dataset, Sequence) and not isinstance(path_or_dataset, (str, bytes)):
    return list(path_or_dataset), "in-memory rows"
  raise TypeError(
      "path_or_dataset must be a local path, a datasets.Dataset/DatasetDict or a "
      f"list of dicts, got {type(path_or_dataset).__name__}"
  )


def _column_names(data: Any) -> List[str]:
  if isinstance(data, list):
    names: Dict[str, None] = {}
    for row in data:
      names.update(dict.fromkeys(row))
    return list(names)
  return list(data.column_names)


def load_prompts(
    path_or_dataset: Any,
    *,
    split: Optional[str] = None,
    field_map: Optional[Mapping[str, FieldSource]] = None,
    limit: Optional[int] = None,
) -> List[Row]:
  """Load local prompt data as a list of row dicts with jdiff column names.

  ``field_map`` maps a jdiff column name to the dataset column holding it
  (e.g. ``{"prompt": "question"}``), or to a callable ``row -> value`` for
  derived fields.  Mapped source columns are renamed (removed under their
  old name unless another field keeps using it); unmapped columns are kept.
  ``split`` selects a split of a DatasetDict (default 'train' or the only
  split) or the files ``{split}.*`` / ``{split}-*`` of a data directory; it
  is ignored for a single file.  ``limit`` keeps the first ``limit`` rows.

  Raises ``FileNotFoundError`` for non-local paths (no Hub access) and
  ``ValueError`` naming the field and listing available columns when a
  mapped column is missing.
  """
  data, label = _to_rows(path_or_dataset, split)
  field_map = dict(field_map or {})
  columns = _column_names(data)
  for target, source in field_map.items():
    if isinstance(source, str) and source not in columns:
      raise ValueError(
          f"field {target!r} is mapped to column {source!r}, which is missing from "
          f"{label}; available columns: {columns}"
      )
  if limit is not None:
    limit = max(0, int(limit))
    data = data[:limit] if isinstance(data, list) else data.select(range(min(limit, len(data))))
  rows = data if isinstance(data, list) else data.to_list()

  renamed = {
      s for t, s in field_map.items() if isinstance(s, str) and s != t and s not in field_map
  }
  out: List[Row] = []
  for i, row in enumerate(rows):
    new = {k: v for k, v in row.items() if k not in renamed}
    for target, source in field_map.items():
      if callable(source):
        new[target] = source(row)
      elif source in row:
        new[target] = row[source]
      else:
        raise ValueError(
            f"field {target!r}: column {source!r} missing in row {i} of {label}; "
            f"available columns: {list(row)}"
        )
    out.append(new)
  return out


# --------------------------------------------------------------------------
# Templating and encoding
# --------------------------------------------------------------------------


def _as_id_list(encoded: Any) -> List[int]:
  """Normalise apply_chat_template outputs (list / BatchEncoding / dict) to ids."""
  if isinstance(encoded, Mapping) or hasattr(encoded, "input_ids"):
    encoded = encoded["input_ids"]
  if hasattr(encoded, "tolist"):
    encoded = encoded.tolist()
  if encoded and isinstance(encoded[0], (list, tuple)):
    if len(encoded) != 1:
      raise ValueError("expected a single tokenized conversation")
    encoded = encoded[0]
  return [int(t) for t in encoded]


def apply_template(
    tokenizer,
    prompt_text: str,
    *,
    system: Optional[str] = None,
    use_chat_template: bool = True,
    suffix: str = "",
) -> List[int]:
  """Token ids of a prompt, ready for generation.

  With a chat template (and ``use_chat_template``): a single user turn,
  preceded by a system turn when ``system`` is given, rendered with
  ``add_generation_prompt=True``; ``suffix`` (e.g. ``"<reasoning>"``) is
  appended after the generation prompt.  Otherwise the plain text
  ``[system + "\\n\\n"] + prompt_text + suffix`` is encoded with the
  tokenizer's default special tokens.
  """
  if use_chat_template and getattr(tokenizer, "chat_template", None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt_text}
    ]
    if not suffix:
      return _as_id_list(
          tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
      )
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return [int(t) for t in tokenizer.encode(text + suffix, add_special_tokens=False)]
  text = (f"{system}\n\n" if system else "") + prompt_text + suffix
  return [int(t) for t in tokenizer.encode(text)]


def encode_prompt_rows(
    tokenizer,
    rows: Sequence[Union[Row, str]],
    *,
    max_prompt_len: int,
    prompt_field: str = "prompt",
    system: Optional[str] = None,
    use_chat_template: bool = True,
    suffix: str = "",
) -> Tuple[List[Union[Row, str]], List[List[int]], int]:
  """Like :func:`encode_prompts` but also returns the kept rows (aligned with ids)."""
  kept_rows: List[Union[Row, str]] = []
  kept_ids: List[List[int]] = []
  dropped = 0
  for row in rows:
    text = row if isinstance(row, str) else row[prompt_field]
    ids = apply_template(
        tokenizer, text, system=system, use_chat_template=use_chat_template, suffix=suffix
    )
    if len(ids) > max_prompt_len:
      dropped += 1
      continue
    kept_rows.append(row)
    kept_ids.append(ids)
  return kept_rows, kept_ids, dropped


def encode_prompts(
    tokenizer,
    rows: Sequence[Union[Row, str]],
    *,
    max_prompt_len: int,
    prompt_field: str = "prompt",
    system: Optional[str] = None,
    use_chat_template: bool = True,
    suffix: str = "",
) -> Tuple[List[List[int]], int]:
  """Template and encode prompts; returns ``(ids_per_kept_prompt, dropped_count)``.

  ``rows`` are dicts (prompt text in ``prompt_field``) or plain strings.
  Prompts whose encoding is longer than ``max_prompt_len`` tokens are
  dropped and counted instead of raising.  Use :func:`encode_prompt_rows`
  to know which rows were kept.
  """
  _, ids, dropped = encode_prompt_rows(
      tokenizer,
      rows,
      max_prompt_len=max_prompt_len,
      prompt_field=prompt_field,
      system=system,
      use_chat_template=use_chat_template,
      suffix=suffix,
  )
  return ids, dropped


def left_pad(
    batch_ids: Sequence[Sequence[int]],
    pad_id: int,
    length: Optional[int] = None,
    bucket: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Left-pad sequences into ``(ids int32 [B, L], attention_mask bool [B, L], positions int32 [B, L])``.

  ``L`` is ``length`` when given (a longer sequence raises ``ValueError``),
  else the longest sequence rounded up to a multiple of ``bucket`` (when
  given, and at least one bucket), else the longest sequence.  Positions
  count real tokens from 0; pad positions are 0.
  """
  seqs = [list(s) for s in batch_ids]
  longest = max((len(s) for s in seqs), default=0)
  if length is not None:
    if longest > length:
      raise ValueError(f"a sequence of length {longest} does not fit length={length}")
    total = int(length)
  elif bucket is not None:
    if bucket <= 0:
      raise ValueError("bucket must be positive")
    total = max(1, -(-longest // bucket)) * bucket
  else:
    total = longest
  ids = np.full((len(seqs), total), pad_id, dtype=np.int32)
  mask = np.zeros((len(seqs), total), dtype=bool)
  positions = np.zeros((len(seqs), total), dtype=np.int32)
  for i, s in enumerate(seqs):
    if not s:
      continue
    ids[i, total - len(s) :] = s
    mask[i, total - len(s) :] = True
    positions[i, total - len(s) :] = np.arange(len(s), dtype=np.int32)
  return ids, mask, positions
