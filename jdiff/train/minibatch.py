"""How a rollout batch becomes optimizer steps: dropped groups, minibatches, step weights.

TraceRL's reference walks the rollout's rows in order and steps the optimizer every
``batch_size × devices × grad_accum`` rows (``config.rl.rows_per_update``; 0 = the whole
batch in one step), ``config.rl.inner_epochs`` times over the rollout. Filtered groups never
become rows (they reach neither the policy nor the value model). For a step-weighted method
(``Method.step_weighted``) each optimizer step's rows carry
:func:`jdiff.rl.losses.step_weights`, computed here on the host over the whole step before the
update step splits it into ``grad_accum`` micro-batches, so ``grad_accum`` changes memory only.
Every step is padded to one fixed row count (copies of its first row with an empty loss
mask and zero weight, which add nothing to a weighted loss) so one compiled shape serves all.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np

from jdiff.rl.losses import step_weights

# Keys whose rows decide what is trained; padding rows get zeros there.
_MASK_KEYS = ("loss_mask", "loss_weight")


def subset_trajectory(traj, keep: np.ndarray):
  """The responses of ``traj`` where ``keep`` ([B] bool) holds (``states`` is [S, B, G])."""
  idx = np.flatnonzero(np.asarray(keep))
  out = {}
  for f in dataclasses.fields(traj):
    v = getattr(traj, f.name)
    if v is None:
      out[f.name] = None
    elif f.name == "states":
      out[f.name] = np.asarray(v)[:, idx]
    else:
      out[f.name] = np.asarray(v)[idx]
  return dataclasses.replace(traj, **out)


def num_rows(batch) -> int:
  return int(np.shape(batch["loss_mask"])[0])


def _take(batch, rows: np.ndarray, n: int, pad_to: int) -> dict:
  """Rows ``rows`` of every per-row leaf (leading dim ``n``), padded to ``pad_to`` rows."""
  extra = pad_to - len(rows)
  out = {}
  for k, v in batch.items():
    a = np.asarray(v)
    if a.ndim == 0 or a.shape[0] != n:
      out[k] = v
      continue
    part = a[rows]
    if extra > 0:
      pad = np.repeat(a[rows[:1]], extra, axis=0)
      if k.endswith(_MASK_KEYS):
        pad = np.zeros_like(pad)
      part = np.concatenate([part, pad], axis=0)
    out[k] = part
  return out


def step_size(rows: int, rows_per_update: int, grad_accum: int, full_rows: int) -> int:
  """Rows of one optimizer step as compiled: ``rows_per_update``, else the whole batch rounded
  up to ``grad_accum`` (``full_rows``: a step's rows with every group kept, for a fixed shape;
  pass ``rows`` where padding would dilute an unweighted loss)."""
  if rows_per_update:
    return int(rows_per_update)
  return -(-max(int(rows), int(full_rows)) // grad_accum) * grad_accum


def minibatches(batch, size: int) -> Iterator[dict]:
  """The optimizer steps over ``batch``'s rows in rollout order, ``size`` rows each (the last
  one padded)."""
  n = num_rows(batch)
  for start in range(0, n, size):
    yield _take(batch, np.arange(start, min(start + size, n)), n, size)


def with_weights(batch, weighted: bool) -> dict:
  """``batch`` with its own step weights (``row_weight``, ``token_weight``) when ``weighted``;
  the weights read the batch's (per-iteration) ``loss_mask``."""
  if not weighted:
    return batch
  return dict(batch, **step_weights(batch["loss_mask"]))


def drop_report(keep: Optional[np.ndarray], group_size: int) -> dict:
  """``kept_groups`` / ``dropped_groups`` of this step's filter (all kept without one)."""
  if keep is None:
    return {}
  groups = np.asarray(keep).reshape(-1, group_size)[:, 0]
  return {"kept_groups": float(groups.sum()), "dropped_groups": float((~groups).sum())}
