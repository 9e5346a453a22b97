#!/usr/bin/env python
"""Supervised fine-tuning: python scripts/sft.py --config configs/sft_NAME.py [--config.a.b=v ...]
[--workdir DIR]

Trains ``config.model`` with the SFT objective ``config.sft.objective`` on the task's
(prompt, target) pairs — the task's own target completion for synthetic tasks, or the
dataset's ``response`` field when ``config.task.train_path`` is set (rename it with
``config.task.field_map``). Writes, under DIR (default ``runs/<config name>``):

- ``metrics.jsonl``: one JSON object per SFT step (``step``, ``loss``, the objective's metrics);
- ``model/``: the trained model as a jdiff checkpoint with its tokenizer (load it with
  ``jdiff.from_pretrained``, sample with ``scripts/sample.py --model DIR/model``, evaluate with
  ``scripts/eval.py --config ... --model DIR/model``);
- ``config.json`` and ``sft_results.json`` (the loss on a fixed probe batch before and after).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402

PROBE_SEED = 2**31 - 1  # the probe batch's noise key: the same before and after training


def _define_flags():
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "a configs/sft_*.py file", lock_config=True)
  flags.DEFINE_string("workdir", None, "output directory (default: runs/<config name>)")


def targets(config, task, rows):
  """The SFT target text of each row: the dataset's ``response`` field for file tasks, else
  the task's rendered completion."""
  if config.task.get("train_path"):
    missing = [i for i, r in enumerate(rows) if not isinstance(r.get("response"), str)]
    if missing:
      raise ValueError(
          f"{config.task.train_path}: row {missing[0]} (and {len(missing) - 1} "
          "more) has no text 'response' field; map the target column with "
          "config.task.field_map={'response': '<column>'}"
      )
    return [r["response"] for r in rows]
  if task.completion is None:
    raise ValueError(
        f"task {task.name!r} has no target completions: set "
        "config.task.train_path to a dataset with a 'response' field"
    )
  return [task.completion(r) for r in rows]


def _probe_loss(model, objective, options, rows, key):
  """The objective's loss on a fixed batch with a fixed noise draw (no gradient)."""
  import functools

  import jax
  from flax import nnx

  batch = jax.jit(functools.partial(objective.build_batch, cfg=model.config, **options))(rows, key)
  graphdef, state = nnx.split(model)
  loss = jax.jit(lambda s, b: objective.loss_fn(nnx.merge(graphdef, s), b)[0])(state, batch)
  return float(loss)


def trace_rows(config, model, tokenizer, task, kept, ids, target_rows, workdir, log):
  """Trace SFT's training rows: an optional warm start on ``target_rows`` with a standard
  objective, then the model's preferred trajectories (collected once per workdir) sliced into
  TraceRL's rows. Returns (model, rows, collection stats)."""
  import copy

  import jax

  from jdiff.sft import trace_sft
  from jdiff.train import setup
  from jdiff.train.config import section_to
  from jdiff.train.rollout import local_rewards, rollout
  from jdiff.train.sft_loop import run_sft
  from jdiff.sharding import make_mesh
  from jdiff.train import distributed as dist

  sc = config.sft
  cc = section_to(trace_sft.TraceCollectConfig, sc.get("trace") or {}, "config.sft.trace")
  if "sampler" not in config:
    raise ValueError(
        "config.sampler: trace SFT samples the training prompts with it; add a "
        "sampler section (see configs/trace_sft_block.py)"
    )
  name, sampler_cfg = setup.sampler_config(config.sampler, model.config.family)

  if cc.warm_start_steps:  # deterministic in the seed, so a rerun rebuilds the same model
    warm = copy.deepcopy(sc)
    with warm.unlocked():
      warm.steps, warm.objective = cc.warm_start_steps, cc.warm_start_objective
      warm.options = dict(cc.warm_start_options or {})
    log(f"trace sft: warm start, {cc.warm_start_steps} steps of {cc.warm_start_objective}")
    model, _ = run_sft(model, target_rows, warm, seed=config.seed, log=log)
  mesh = make_mesh((1, 1, 1))

  def sample_rows(idx, key):
    prompt_ids = [ids[i] for i in idx]
    traj, mine = rollout(
        model,
        mesh,
        name,
        sampler_cfg,
        prompt_ids,
        model.config.pad_token_id,
        config.data.max_prompt_len,
        key,
    )
    traj = dist.to_host(traj)
    return traj, local_rewards(
        task.reward, tokenizer, task, traj.tokens, traj.lengths, mine, [kept[i] for i in idx]
    )

  def make():
    return trace_sft.collect(
        sample_rows,
        task.correct,
        ids,
        cc,
        jax.random.fold_in(jax.random.key(config.seed), 2**31 - 3),
    )

  records, stats = trace_sft.collected(workdir, make, log)
  traj = trace_sft.as_trajectory(records, model.config.pad_token_id)
  return model, trace_sft.build_rows(traj, model.config, cc), stats


def run(config, workdir, log=print):
  """SFT of ``config`` (see configs/sft_block.py) into ``workdir``; returns the results dict."""
  import json
  import time

  import jax
  import numpy as np

  from jdiff import sft as sft_lib
  from jdiff.train import setup
  from jdiff.train.metrics import MetricsWriter
  from jdiff.train.run_setup import write_model
  from jdiff.train.sft_loop import run_sft, sft_rows

  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)
  sc = config.sft
  model, tokenizer = setup.load_policy(config.model, config.seed)
  mc = model.config
  task, train_rows, _ = setup.task_rows(config.task)
  kept, ids, dropped = setup.encode(
      tokenizer, train_rows, config.data.max_prompt_len, config.data.use_chat_template
  )
  if not kept:
    raise ValueError(
        f"no training prompts left: all {len(train_rows)} are longer than "
        f"config.data.max_prompt_len={config.data.max_prompt_len} tokens"
    )
  if dropped:
    log(f"dropped {dropped} prompts longer than {config.data.max_prompt_len} tokens")
  rows = sft_rows(
      tokenizer,
      ids,
      targets(config, task, kept),
      int(sc.max_len),
      mc.eos_token_id,
      mc.pad_token_id,
      pad_in_loss=bool(sc.pad_in_loss),
  )
  trace_stats = {}
  if sc.objective == "trace_sft":  # the model's own correct trajectories replace the targets
    model, rows, trace_stats = trace_rows(
        config, model, tokenizer, task, kept, ids, rows, workdir, log
    )
  source = config.model.get("checkpoint") or config.model.preset
  log(
      f"sft: {len(kept)} samples, objective {sc.objective}, {sc.steps} steps of "
      f"{sc.batch_size}, model {mc.family} ({source})"
  )

  objective = sft_lib.get(sc.objective)
  options = dict(sc.get("options") or {})
  probe_rows = {k: v[: min(int(sc.batch_size), len(kept))] for k, v in rows.items()}
  probe_key = jax.random.key(PROBE_SEED)
  loss_before = _probe_loss(model, objective, options, probe_rows, probe_key)

  writer = MetricsWriter(workdir, tensorboard=config.get("tensorboard", True))
  if jax.process_index() == 0:
    if os.path.exists(writer.path):
      os.remove(writer.path)  # a fresh run: no resume for SFT
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  clock = [time.time()]

  def on_step(step, metrics):
    now = time.time()
    writer.write(step + 1, {**metrics, "step_s": now - clock[0]})
    clock[0] = now

  model, losses = run_sft(model, rows, sc, seed=config.seed, log=log, on_step=on_step)
  writer.close()
  loss_after = _probe_loss(model, objective, options, probe_rows, probe_key)

  out = write_model(
      model, workdir, config.model.get("checkpoint"), config.model.get("tokenizer"), tokenizer
  )
  results = {
      "loss_before": loss_before,
      "loss_after": loss_after,
      "train_loss_first": losses[0] if losses else None,
      "train_loss_last": float(np.mean(losses[-10:])) if losses else None,
      "steps": int(sc.steps),
      "samples": len(kept),
      "dropped_prompts": dropped,
      "model_dir": out,
      "seconds": time.time() - t_start,
      **trace_stats,
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "sft_results.json"), "w") as f:
      json.dump(results, f, indent=2)
  print(
      f"sft loss on the probe batch: before {loss_before:.4f} -> after {loss_after:.4f}; "
      f"model saved to {out}"
  )
  return results


def main(argv):
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  run(config, flags.FLAGS.workdir or os.path.join("runs", name))


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("config")
  app.run(main)
