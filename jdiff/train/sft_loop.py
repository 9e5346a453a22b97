"""Supervised warm start: any registered SFT objective on (prompt, target completion) pairs.

Used by ``scripts/sft.py`` and by RL configs whose ``sft.steps > 0`` (the embedded default
warm-starts its policy this way before TraceRL).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, List, Optional

import jax
import numpy as np

from jdiff import sft as sft_lib
from jdiff.train.optim import make_optimizer
from jdiff.train.update import init_train_state, make_update_step
from flax import nnx


def sft_rows(
    tokenizer,
    prompt_ids: List[List[int]],
    completions: List[str],
    max_len: int,
    eos_id: int,
    pad_id: int,
    pad_in_loss: bool,
):
  responses = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
  width = max(len(p) for p in prompt_ids)
  need = width + max(len(r) for r in responses) + 1
  if need > max_len:
    raise ValueError(f"config.sft.max_len={max_len} is too short: a sample needs {need} tokens")
  return sft_lib.make_rows(
      prompt_ids,
      responses,
      max_len,
      pad_id=pad_id,
      eos_id=eos_id,
      pad_in_loss=pad_in_loss,
      prompt_width=width,
  )


def run_sft(
    model,
    rows: dict,
    sc,
    seed: int = 0,
    mesh=None,
    log: Optional[Callable[[str], None]] = print,
    on_step: Optional[Callable[[int, dict], None]] = None,
):
  """Trains ``model`` for ``sc.steps`` steps of ``sc.objective``; returns the trained model."""
  objective = sft_lib.get(sc.objective)
  options = dict(sc.get("options") or {})
  build = jax.jit(functools.partial(objective.build_batch, cfg=model.config, **options))
  optimizer = make_optimizer(dict(sc.optim))
  graphdef, state = init_train_state(model, optimizer, mesh=mesh)
  update = make_update_step(
      graphdef, optimizer, objective.loss_fn, mesh=mesh, grad_accum=int(sc.get("grad_accum", 1))
  )
  n = len(next(iter(rows.values())))  # rows: any dict of [N, ...] arrays
  rng = np.random.default_rng(seed)
  key = jax.random.key(seed)
  t0, losses = time.time(), []
  for step in range(int(sc.steps)):
    idx = rng.choice(n, size=min(int(sc.batch_size), n), replace=n < int(sc.batch_size))
    key, sub = jax.random.split(key)
    batch = build({k: v[idx] for k, v in rows.items()}, sub)
    state, metrics = update(state, batch)
    losses.append(float(metrics["loss"]))
    if on_step is not None:
      on_step(step, metrics)
    if log and (step + 1) % max(1, int(sc.steps) // 5) == 0:
      log(
          f"sft step {step + 1}/{sc.steps}: loss {np.mean(losses[-20:]):.4f} "
          f"({time.time() - t0:.0f}s)"
      )
  return nnx.merge(graphdef, state.params, state.rest), losses
