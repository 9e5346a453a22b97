"""The offline loop (dTRPO, or any method with ``Method.offline``): a fixed preference-pair set
built once, then epochs of DPO updates against the frozen warm-started policy.

  warm start (SFT, as rl_loop) -> pairs -> eval before -> [batch -> ref log-probs -> update]*
  -> eval after

Pairs come from ``config.offline.pairs_path`` (a local jsonl / json / parquet / csv file with
text fields ``prompt``, ``chosen``, ``rejected``; rename columns with ``offline.field_map``) or,
when it is empty, from the warm-started policy itself: ``group_size`` completions per training
prompt with ``config.sampler``, scored with the task reward, the first best-reward completion
paired with the first worst-reward one; groups whose rewards are all equal give no pair.
Either way the pairs are written ONCE to ``WORKDIR/pairs.jsonl`` (token ids plus decoded text,
so a user can read them) and every later run in that workdir (a resume) reads them back, so a
resumed run trains on exactly the same pairs as the straight run.

Per step the pairs are drawn in a seeded per-epoch order (a function of (seed, epoch)) and the
re-masking draws of ``build_batch`` from ``fold_in(key, step)``, so resuming is exact.

``metrics.jsonl`` rows: ``step``, ``loss`` and the method's metrics (dTRPO: ``margin``,
``reward_accuracy`` = fraction of pairs with Δ(y_w) > Δ(y_l), ``chosen_reward``,
``rejected_reward``), ``train_s``; ``reward_mean`` is the mean task reward of the completions
sampled to build the pairs (a constant; ``"nan"`` when the pairs came from a file) and
``rollout_s`` the pair-building time, reported on step 1 only (there are no rollouts after).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
from tqdm import tqdm

from jdiff.rl.method import Method, methods
from jdiff.sharding.rules import sampling_rules
from jdiff.train import distributed as dist
from jdiff.train.checkpointing import Checkpointer
from jdiff.train.config import OfflineConfig
from jdiff.train.optim import make_optimizer
from jdiff.train.pairs import (
    PAIRS_FILE,
    file_pairs,
    pair_batch,
    read_pairs,
    response_width,
    sample_pairs,
    save_pairs,
)
from jdiff.train.rollout import evaluate
from jdiff.train.run_setup import Run, close_run, epoch_order, open_run, warm_start
from jdiff.train.runtime import Runtime, policy_runtime


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg)


@dataclasses.dataclass(frozen=True)
class OfflineContext:
  """What every offline step reads and none changes."""

  run: Run
  config: Any
  oc: OfflineConfig
  method: Method
  method_cfg: Any
  pairs: List[dict]
  width: int  # the response width of every batch (one compiled shape)
  steps: int  # the last step of this run (epochs' worth, or offline.max_steps)
  reward_mean: float  # of the completions the pairs were sampled from (nan for a file)
  build_s: float  # the pair-building time (reported on step 1)


def _evaluate(r: Run, config, policy: Runtime) -> Optional[Dict[str, float]]:
  if not r.evalset.rows:
    return None
  eval_name, eval_cfg = r.eval_sampler
  return evaluate(
      policy.sampling_model(),
      r.mesh,
      r.tokenizer,
      r.task,
      r.evalset,
      eval_name,
      eval_cfg,
      config,
      r.eval_key,
  )


def _existing_pairs(r: Run, config, oc: OfflineConfig, workdir: str):
  """The pair set known before the warm start: this workdir's (a resume trains on the same
  pairs), else a pairs file (read early, so a malformed file fails fast): (pairs, stats, s)."""
  pairs_path = os.path.join(workdir, PAIRS_FILE)
  if os.path.exists(pairs_path):
    pairs = read_pairs(pairs_path)
    _log(f"read {len(pairs)} pairs from {pairs_path}")
    return pairs, None, 0.0
  if r.start is not None:
    raise FileNotFoundError(f"{workdir} has checkpoints but no {PAIRS_FILE}: cannot resume")
  if oc.pairs_path:
    t0 = time.time()
    pairs, stats = file_pairs(
        oc.pairs_path,
        oc.field_map,
        r.tokenizer,
        config,
        r.model.config.eos_token_id,
        oc.max_response_len,
    )
    return pairs, stats, time.time() - t0
  return None, None, 0.0


def _new_pairs(r: Run, config, oc, policy: Runtime, results: dict, workdir: str, found):
  """The pair set (sampled from ``policy`` when none was found); a new one is reported and
  saved to the workdir. Returns (pairs, build seconds)."""
  pairs, stats, build_s = found
  if pairs is None:
    t0 = time.time()
    n = int(oc.num_prompts) or len(r.train.require("train").rows)
    sampler_name, sampler_cfg = r.sampler
    pairs, stats = sample_pairs(
        policy.sampling_model(),
        r.mesh,
        r.tokenizer,
        r.task,
        r.train.rows[:n],
        r.train.ids[:n],
        sampler_name,
        sampler_cfg,
        oc,
        config,
        jax.random.fold_in(r.key, 2**31 - 2),
    )
    build_s = time.time() - t0
  if stats is not None:  # a new pair set: report and save it
    results.update(stats, pair_build_s=build_s)
    _log(f"pairs: {json.dumps(stats)} ({build_s:.0f}s)")
    if not pairs:
      raise ValueError(
          "no preference pairs: every sampled group had equal rewards (or the "
          "pairs file is empty); raise offline.group_size or sampler temperature"
      )
    if dist.is_primary():
      save_pairs(os.path.join(workdir, PAIRS_FILE), pairs)
    dist.barrier("offline_pairs")
  return pairs, build_s


def offline_step(ctx: OfflineContext, policy: Runtime, step: int) -> Tuple[Runtime, dict]:
  """Update step ``step`` (0-based) on its pairs against the frozen reference (-> eval)."""
  r, size, mc = ctx.run, int(ctx.oc.pairs_per_step), ctx.run.model.config
  t1 = time.time()
  idx = epoch_order(len(ctx.pairs), step * size, size, ctx.config.seed)
  batch = ctx.method.build_batch(
      pair_batch(ctx.pairs, idx, ctx.width, ctx.config.data.max_prompt_len, mc.pad_token_id),
      None,
      jax.random.fold_in(r.key, step),
      ctx.method_cfg,
      mc,
  )
  batch["ref_logp"] = policy.scores(batch, params=policy.ref_params)
  policy, m = policy.step(batch)
  row = {k: float(v) for k, v in m.items()}
  row.update(
      train_s=time.time() - t1,
      reward_mean=ctx.reward_mean,
      rollout_s=ctx.build_s if step == 0 else 0.0,
      epoch=step * size / len(ctx.pairs),
  )
  if ctx.oc.eval_every and (step + 1) % int(ctx.oc.eval_every) == 0 and step + 1 < ctx.steps:
    ev = _evaluate(r, ctx.config, policy)
    if ev is not None:
      row.update(eval_accuracy=ev["accuracy"], eval_reward=ev["reward"])
  return policy, row


def _start(r: Run, config, policy: Runtime, results: dict) -> Tuple[Runtime, int, dict]:
  """Restores the latest checkpoint, or evaluates the starting policy: (policy, step, results)."""
  if r.start is not None:
    items, meta = r.ckpt.restore(r.start, targets=policy.items("policy"))
    r.writer.truncate_after(r.start)
    _log(f"resumed from step {r.start}")
    return policy.restored(items, "policy"), r.start, meta.get("results", results)
  before = _evaluate(r, config, policy)
  if before is not None:
    results["accuracy_before"] = before["accuracy"]
    _log(f"eval before: accuracy {before['accuracy']:.3f} reward {before['reward']:.3f}")
  return policy, 0, results


def _setup(config, workdir: str):
  """Opens the run and builds the pair set and the policy: (context, policy, results)."""
  method = methods.get(config.method.name)
  if not method.offline:
    raise ValueError(
        f"config.method.name={config.method.name!r} is an online method; use " "jdiff.train.rl_loop"
    )
  r = open_run(config, workdir, _log)  # validates every key before anything loads
  oc, method_cfg = r.cfg.offline, r.cfg.method_cfg
  results: Dict[str, Any] = {"dropped_prompts": r.dropped}
  found = _existing_pairs(r, config, oc, workdir)
  model = warm_start(r, config, _log) if r.start is None and config.sft.steps > 0 else r.model
  # The reference is the frozen warm-started policy.
  policy = policy_runtime(
      model,
      make_optimizer(dict(config.optim)),
      method,
      method_cfg,
      mesh=r.mesh,
      grad_accum=int(oc.grad_accum),
      sample_rules=sampling_rules(config),
      with_ref=True,
  )
  pairs, build_s = _new_pairs(r, config, oc, policy, results, workdir, found)
  policy, start, results = _start(r, config, policy, results)
  steps = math.ceil(int(oc.epochs) * len(pairs) / int(oc.pairs_per_step))
  results["steps"] = steps
  ctx = OfflineContext(
      run=r,
      config=config,
      oc=oc,
      method=method,
      method_cfg=method_cfg,
      pairs=pairs,
      width=response_width(pairs, r.sampler[1], oc),
      steps=min(steps, int(oc.max_steps)) if oc.max_steps else steps,
      reward_mean=results.get("pair_build_reward_mean", math.nan),
      build_s=build_s,
  )
  return ctx, policy, start, results


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs the offline ``config`` (see configs/dtrpo.py) in ``workdir``; returns results."""
  ctx, policy, start, results = _setup(config, workdir)
  r, size = ctx.run, int(ctx.oc.pairs_per_step)
  for step in tqdm(
      range(start, ctx.steps),
      initial=start,
      total=ctx.steps,
      desc="offline",
      disable=jax.process_index() != 0,
  ):
    policy, row = offline_step(ctx, policy, step)
    r.writer.write(step + 1, row)
    if (step + 1) % int(config.checkpoint.every) == 0 or step + 1 == ctx.steps:
      r.ckpt.save(
          step + 1,
          policy.items("policy"),
          meta={"data_position": (step + 1) * size, "seed": config.seed, "results": results},
          force=True,
      )
  after = _evaluate(r, config, policy)
  if after is not None:
    results["accuracy_after"] = after["accuracy"]
    _log(
        f"eval after: accuracy {after['accuracy']:.3f} reward {after['reward']:.3f}"
        + (f" (before: {results['accuracy_before']:.3f})" if "accuracy_before" in results else "")
    )
  return close_run(r, workdir, results, model=policy.sampling_model())


def params_of(workdir: str) -> dict:
  """The latest checkpoint's policy params as nested numpy dicts (tests compare runs)."""
  items, _ = Checkpointer(workdir, read_only=True).restore()
  return jax.tree.map(np.asarray, items["policy"]["params"])
