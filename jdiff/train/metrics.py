"""Per-step metrics: ``metrics.jsonl`` and TensorBoard event files, written by process 0."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Mapping

import jax
import numpy as np


def to_python(metrics: Mapping[str, Any]) -> Dict[str, Any]:
  out = {}
  for k, v in metrics.items():
    if isinstance(v, (jax.Array, np.ndarray, np.generic)):
      v = np.asarray(v)
      v = v.item() if v.size == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
      v = str(v)  # JSON has no NaN/inf
    out[k] = v
  return out


class MetricsWriter:

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, Any]) -> Dict[str, Any]:
    row = {"step": int(step), **to_python(metrics)}
    if not self.enabled:
      return row
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()
    return row

  def truncate_after(self, step: int) -> None:
    """On resume, drops rows written after the restored checkpoint's step."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(rows)

  def close(self):
    if self._tb is not None:
      self._tb.close()
