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

import functools
import json
import math
import os
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jdiff.rl.method import methods
from jdiff.sharding import shard_state, use_rules
from jdiff.sharding.rules import TRAIN_RULES, sampling_rules
from jdiff.train import distributed as dist
from jdiff.train.checkpointing import Checkpointer
from jdiff.train.optim import make_optimizer
from jdiff.train.config import offline_config, section_to
from jdiff.train.pairs import (PAIRS_FILE, file_pairs, pair_batch, read_pairs, response_width,
                               sample_pairs, save_pairs)
from jdiff.train.rollout import evaluate
from jdiff.train.run_setup import close_run, epoch_order, open_run, warm_start
from jdiff.train.update import batch_shardings, init_train_state, make_update_step


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg)


# ----------------------------------------------------------------------------- pair sets


# ----------------------------------------------------------------------------- the loop


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs the offline ``config`` (see configs/dtrpo.py) in ``workdir``; returns results."""
  method = methods.get(config.method.name)
  if not method.offline:
    raise ValueError(f"config.method.name={config.method.name!r} is an online method; use "
                     "jdiff.train.rl_loop")
  r = open_run(config, workdir, _log)  # validates every key before anything loads
  oc = offline_config(config)
  method_cfg = section_to(method.config_cls, config.method, "config.method", skip=("name",))
  model, tokenizer, task, evalset = r.model, r.tokenizer, r.task, r.evalset
  kept, ids, dropped = r.train.rows, r.train.ids, r.dropped
  mc, mesh, writer, ckpt, start = model.config, r.mesh, r.writer, r.ckpt, r.start
  key, eval_key = r.key, r.eval_key
  (sampler_name, sampler_cfg), (eval_name, eval_cfg) = r.sampler, r.eval_sampler
  results: Dict[str, Any] = {"dropped_prompts": dropped}
  pairs_path = os.path.join(workdir, PAIRS_FILE)
  results: Dict[str, Any] = {"dropped_prompts": dropped}

  # The pair set: this workdir's (a resume trains on the same pairs), else a pairs file (read
  # before the warm start, so a malformed file fails fast), else sampled after the warm start.
  build_s, pairs, stats = 0.0, None, None
  if os.path.exists(pairs_path):
    pairs = read_pairs(pairs_path)
    _log(f"read {len(pairs)} pairs from {pairs_path}")
  elif start is not None:
    raise FileNotFoundError(f"{workdir} has checkpoints but no {PAIRS_FILE}: cannot resume")
  elif oc.pairs_path:
    t0 = time.time()
    pairs, stats = file_pairs(oc.pairs_path, oc.field_map, tokenizer, config, mc.eos_token_id,
                              oc.max_response_len)
    build_s = time.time() - t0

  if start is None and config.sft.steps > 0:
    model = warm_start(r, config, _log)

  optimizer = make_optimizer(dict(config.optim))
  graphdef, state = init_train_state(model, optimizer, mesh=mesh, rules=TRAIN_RULES)
  update = make_update_step(graphdef, optimizer, functools.partial(method.loss_fn, cfg=method_cfg),
                            mesh=mesh, rules=TRAIN_RULES, grad_accum=int(oc.grad_accum))
  score = jax.jit(lambda params, rest, batch: method.logprob_fn(
      nnx.merge(graphdef, params, rest), batch, method_cfg))
  ref_params = jax.tree.map(jnp.copy, state.params)  # frozen: the warm-started policy

  sample_rules = sampling_rules(config)

  def current_model():
    """The policy in ``config.mesh.sampling_layout`` (as rl_loop samples it)."""
    return nnx.merge(graphdef, shard_state(state.params, mesh, sample_rules),
                     shard_state(state.rest, mesh, sample_rules))

  def put(batch):
    return dist.to_global(batch, batch_shardings(batch, mesh, TRAIN_RULES))

  def ref_logp(batch):
    with jax.set_mesh(mesh), use_rules(TRAIN_RULES):
      return score(ref_params, state.rest, put(batch))

  def run_eval():
    if not evalset.rows:
      return None
    return evaluate(current_model(), mesh, tokenizer, task, evalset, eval_name, eval_cfg,
                    config, eval_key)

  if pairs is None:
    t0 = time.time()
    n = int(oc.num_prompts) or len(r.train.require("train").rows)
    pairs, stats = sample_pairs(current_model(), mesh, tokenizer, task, kept[:n], ids[:n],
                                sampler_name, sampler_cfg, oc, config,
                                jax.random.fold_in(key, 2**31 - 2))
    build_s = time.time() - t0
  if stats is not None:  # a new pair set: report and save it
    results.update(stats, pair_build_s=build_s)
    _log(f"pairs: {json.dumps(stats)} ({build_s:.0f}s)")
    if not pairs:
      raise ValueError("no preference pairs: every sampled group had equal rewards (or the "
                       "pairs file is empty); raise offline.group_size or sampler temperature")
    if dist.is_primary():
      save_pairs(pairs_path, pairs)
    dist.barrier("offline_pairs")
  width = response_width(pairs, sampler_cfg, oc)

  if start is not None:
    items, meta = ckpt.restore(start, targets={"policy": state, "reference": ref_params})
    state, ref_params = items["policy"], items["reference"]
    writer.truncate_after(start)
    results = meta.get("results", results)
    _log(f"resumed from step {start}")
  else:
    start = 0
    before = run_eval()
    if before is not None:
      results["accuracy_before"] = before["accuracy"]
      _log(f"eval before: accuracy {before['accuracy']:.3f} reward {before['reward']:.3f}")

  size = int(oc.pairs_per_step)
  steps = math.ceil(int(oc.epochs) * len(pairs) / size)
  results["steps"] = steps
  if oc.max_steps:  # stop early; a rerun with a larger max_steps (or 0) continues
    steps = min(steps, int(oc.max_steps))
  reward_mean = results.get("pair_build_reward_mean", math.nan)
  for step in tqdm(range(start, steps), initial=start, total=steps, desc="offline",
                   disable=jax.process_index() != 0):
    t1 = time.time()
    idx = epoch_order(len(pairs), step * size, size, config.seed)
    batch = method.build_batch(pair_batch(pairs, idx, width, config.data.max_prompt_len,
                                          mc.pad_token_id),
                               None, jax.random.fold_in(key, step), method_cfg, mc)
    batch["ref_logp"] = dist.to_host(ref_logp(batch))
    state, m = update(state, put(batch))
    row = {k: float(v) for k, v in dist.to_host(m).items()}
    row.update(train_s=time.time() - t1, reward_mean=reward_mean,
               rollout_s=build_s if step == 0 else 0.0, epoch=step * size / len(pairs))
    if oc.eval_every and (step + 1) % int(oc.eval_every) == 0 and step + 1 < steps:
      ev = run_eval()
      if ev is not None:
        row.update(eval_accuracy=ev["accuracy"], eval_reward=ev["reward"])
    writer.write(step + 1, row)
    if (step + 1) % int(config.checkpoint.every) == 0 or step + 1 == steps:
      ckpt.save(step + 1, {"policy": state, "reference": ref_params},
                meta={"data_position": (step + 1) * size, "seed": config.seed,
                      "results": results}, force=True)

  after = run_eval()
  if after is not None:
    results["accuracy_after"] = after["accuracy"]
    _log(f"eval after: accuracy {after['accuracy']:.3f} reward {after['reward']:.3f}"
         + (f" (before: {results['accuracy_before']:.3f})" if "accuracy_before" in results
            else ""))
  return close_run(r, workdir, results)


def params_of(workdir: str) -> dict:
  """The latest checkpoint's policy params as nested numpy dicts (tests compare runs)."""
  items, _ = Checkpointer(workdir, read_only=True).restore()
  return jax.tree.map(np.asarray, items["policy"]["params"])
