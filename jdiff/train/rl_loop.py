"""The RL loop: rollout -> rewards -> advantages -> updates -> eval -> checkpoint, on a mesh.

New parameters go straight to the sampler (no disk round trip); the optimizer state is kept
across RL steps unless ``rl.reset_optimizer`` (the reference re-creates AdamW every step).
Randomness is a pure function of (seed, step), and the prompt order of (seed, epoch), so a
run resumed from a checkpoint continues exactly as the uninterrupted run would have.

Mesh and processes. ``config.mesh.shape`` (data, fsdp, tensor; one -1 fills the rest) lays out
the policy, value model and reference params by ``TRAIN_RULES``; rollouts run on the same
mesh with the weights in ``config.mesh.sampling_layout`` ("gathered" by default, see
:data:`SAMPLING_LAYOUTS`) and the prompts sharded over the data axes. Every process (one per
host, same command) runs this same function: it pads and places only the prompt rows its
devices hold, decodes and scores only those rows, and the rewards are
gathered so that advantages and the method's host-side batch are built from the full batch,
identically everywhere (see :mod:`jdiff.train.distributed`). Process 0 alone writes metrics,
logs, ``config.json`` and ``results.json``; every process takes part in Orbax saves/restores.
The optional SFT warm start runs unsharded and identically in each process (it is sized for
the embedded default; warm-start real models with scripts/sft.py).

Updates (:mod:`jdiff.train.minibatch`): groups the accuracy filter drops build no rows (neither
the policy nor the value model sees them; ``kept_groups`` / ``dropped_groups`` are logged, while
``reward_mean`` / ``accuracy`` stay over every response); the kept rows are walked in rollout
order, one optimizer step per ``rl.rows_per_update`` rows (0 = all), ``rl.inner_epochs`` times,
each step's loss normalised over the step's own rows whatever ``rl.grad_accum``.
``metrics.jsonl`` reports the policy metrics' mean over the step's ``optimizer_steps``.

Structure: :func:`run` opens the run, builds an :class:`RLRuntime` (the policy's and optional
value model's :class:`~jdiff.train.runtime.Runtime`) and a :class:`StepContext` (everything a
step reads and nothing it changes), then calls :func:`rl_step` once per step; each step returns
the new runtime and its ``metrics.jsonl`` row.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jdiff.rl import advantages as adv_lib
from jdiff.rl import value as value_lib
from jdiff.rl.method import Method, num_iterations, select_iteration
from jdiff.rl.registry import advantage_estimators
from jdiff.sharding.rules import sampling_rules
from jdiff.train import distributed as dist
from jdiff.train import minibatch
from jdiff.train.config import RLConfig
from jdiff.train.optim import make_optimizer
from jdiff.train.rollout import evaluate, local_rewards, reward_options, rollout
from jdiff.train.run_setup import Run, close_run, open_run, warm_start
from jdiff.train.runtime import Runtime, policy_runtime, value_runtime


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg)


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What every RL step reads and none changes."""

  run: Run
  config: Any
  rc: RLConfig
  method: Method
  method_cfg: Any
  advantage: Callable[..., Any]  # config.rl.advantage's group estimator
  vcfg: Optional[value_lib.ValueConfig] = None  # set when the value model is enabled


@dataclasses.dataclass(frozen=True)
class RLRuntime:
  """The policy's runtime and, with ``config.value.enabled``, the value model's."""

  policy: Runtime
  value: Optional[Runtime] = None

  def items(self) -> dict:
    """What a checkpoint stores."""
    return {
        **self.policy.items("policy"),
        **(self.value.items("value") if self.value is not None else {}),
    }

  def restored(self, items: dict) -> "RLRuntime":
    value = self.value.restored(items, "value") if self.value is not None else None
    return RLRuntime(self.policy.restored(items, "policy"), value)


def build(config, r: Run, model) -> Tuple[StepContext, RLRuntime]:
  """The step context and the initial runtimes for ``model`` (the warm-started policy)."""
  rc, method, method_cfg = r.cfg.rl, r.cfg.method, r.cfg.method_cfg
  policy = policy_runtime(
      model,
      make_optimizer(dict(config.optim)),
      method,
      method_cfg,
      mesh=r.mesh,
      grad_accum=int(rc.grad_accum),
      sample_rules=sampling_rules(config),
  )
  vcfg, value = r.cfg.value_cfg, None
  if vcfg is not None:  # config.value.enabled
    value = value_runtime(
        model,
        make_optimizer(dict(config.value.optim)),
        vcfg,
        model.config,
        mesh=r.mesh,
        grad_accum=int(rc.grad_accum),
    )
  ctx = StepContext(
      run=r,
      config=config,
      rc=rc,
      method=method,
      method_cfg=method_cfg,
      advantage=advantage_estimators.get(rc.advantage),
      vcfg=vcfg,
  )
  return ctx, RLRuntime(policy, value)


def _evaluate(ctx: StepContext, policy: Runtime) -> Dict[str, float]:
  r = ctx.run
  eval_name, eval_cfg = r.eval_sampler
  return evaluate(
      policy.sampling_model(),
      r.mesh,
      r.tokenizer,
      r.task,
      r.evalset.require("eval"),
      eval_name,
      eval_cfg,
      ctx.config,
      r.eval_key,
  )


def _collect(ctx: StepContext, policy: Runtime, step: int, skey):
  """Rollouts of this step's prompts and their rewards, gathered on every process."""
  r, rc = ctx.run, ctx.rc
  train, group = r.train.require("train"), int(rc.group_size)
  idx = train.batch(step * int(rc.prompts_per_step), int(rc.prompts_per_step))
  prompt_ids = [train.ids[i] for i in idx for _ in range(group)]
  rows = [train.rows[i] for i in idx for _ in range(group)]
  sampler_name, sampler_cfg = r.sampler
  traj, mine = rollout(
      policy.sampling_model(),
      r.mesh,
      sampler_name,
      sampler_cfg,
      prompt_ids,
      r.model.config.pad_token_id,
      ctx.config.data.max_prompt_len,
      jax.random.fold_in(skey, 0),
      rollout_batch=int(rc.rollout_batch),
  )
  traj = dist.to_host(traj)  # the method's batch builder reads whole trajectories
  rewards = local_rewards(
      ctx.config.task.get("reward") or r.task.reward,
      r.tokenizer,
      r.task,
      traj.tokens,
      traj.lengths,
      mine,
      rows,
      **reward_options(ctx.config.task, sampler_cfg, traj),
  )
  return traj, dist.gather_rows(rewards, mine, len(prompt_ids))


def _advantages(ctx: StepContext, rewards, step: int):
  """Per-response advantages and the accuracy filter's keep mask (None without the filter).
  Warns when the kept groups carry no learning signal (every advantage 0)."""
  rc = ctx.rc
  adv = np.asarray(
      ctx.advantage(
          jnp.asarray(rewards, jnp.float32),
          int(rc.group_size),
          std_normalize=bool(rc.std_normalize),
      )
  )
  keep = None
  if rc.filter_groups:  # group_filter warns when it keeps nothing
    keep = adv_lib.group_filter(rewards, int(rc.group_size), rc.filter_low, rc.filter_high)
  kept = adv if keep is None else adv[keep]
  if kept.size and not np.any(kept != 0):
    warnings.warn(
        f"step {step + 1}: no learning signal: every advantage of the "
        f"{kept.size} kept responses is 0 (equal rewards within each group)",
        stacklevel=2,
    )
  return adv, keep


def _train_batch(ctx: StepContext, rt: RLRuntime, traj, rewards, skey, step: int = 0):
  """The method's batch of the kept groups with advantages, old (and reference) log-probs;
  with the value model also its values and the returns: (batch, values, returns, keep).
  Filtered groups build no rows; batch is None when the filter dropped every group."""
  adv, keep = _advantages(ctx, rewards, step)
  if keep is not None:
    if not keep.any():
      return None, None, None, keep
    traj, adv = minibatch.subset_trajectory(traj, keep), adv[keep]
  batch = ctx.method.build_batch(
      traj, adv, jax.random.fold_in(skey, 1), ctx.method_cfg, ctx.run.model.config
  )
  v_rows, returns = None, None
  if rt.value is not None:
    v_rows = rt.value.scores(batch)  # in rl.grad_accum row chunks, on the host
    returns, tok_adv, _ = value_lib.returns_and_advantages(
        batch, v_rows, adv, len(adv), traj.tokens.shape[1], ctx.vcfg
    )
    value_lib.scatter_to_rows(batch, tok_adv, "advantages")
  batch["old_logp"] = rt.policy.scores(batch)
  if rt.policy.ref_params is not None:
    batch["ref_logp"] = rt.policy.scores(batch, params=rt.policy.ref_params)
  return batch, v_rows, returns, keep


def _step_size(ctx: StepContext, batch, keep, weighted: bool) -> int:
  """Rows per optimizer step; a weighted method's whole-batch step keeps the shape of a step
  that kept every group (padding is exact there), others pad only up to grad_accum."""
  rows = minibatch.num_rows(batch)
  full = rows
  if weighted and keep is not None:
    full = -(-rows * len(keep) // int(np.sum(keep)))
  return minibatch.step_size(rows, int(ctx.rc.rows_per_update), int(ctx.rc.grad_accum), full)


def _policy_updates(ctx: StepContext, policy: Runtime, batch, keep=None):
  """Epochs over the rollout batch, one optimizer step per ``rl.rows_per_update`` rows in
  rollout order. d1 / CJ-GRPO run their μ = num_iterations epochs, iteration m on the m-th
  stacked input; others ``rl.inner_epochs``."""
  if ctx.rc.reset_optimizer:
    policy = policy.reset_optimizer()
  metrics = []
  if batch is None:
    return policy, metrics
  weighted = ctx.method.step_weighted
  size = _step_size(ctx, batch, keep, weighted)
  mu = num_iterations(batch)
  n = int(getattr(ctx.method_cfg, "num_iterations", 0) or ctx.rc.inner_epochs)
  for it in range(n):
    for part in minibatch.minibatches(batch, size):
      part = select_iteration(part, it % mu) if mu > 1 else part
      policy, m = policy.step(minibatch.with_weights(part, weighted))
      metrics.append(m)
  return policy, metrics


def _value_update(
    ctx: StepContext, value: Optional[Runtime], batch, v_rows, returns, step, keep=None
):
  """One pass over the kept rows, minibatched as the policy; the reference counts epochs from
  1 and trains the value model when ``epoch % train_value_every == 0``."""
  if value is None or batch is None or (step + 1) % ctx.vcfg.train_value_every:
    return value, {}
  vbatch = dict(batch, old_values=v_rows)
  value_lib.scatter_to_rows(vbatch, returns, "returns")
  losses, skipped = [], 0.0
  for part in minibatch.minibatches(vbatch, _step_size(ctx, vbatch, keep, True)):
    value, vm = value.step(minibatch.with_weights(part, True))
    losses.append(float(vm["loss"]))
    skipped += float(vm["skipped"])
  return value, {"value_loss": float(np.mean(losses)), "value_skipped": skipped}


def _row(ctx: StepContext, traj, rewards, metrics, rollout_s, train_s) -> Dict[str, float]:
  lengths = np.asarray(traj.lengths)
  row = {
      "reward_mean": float(rewards.mean()),
      "reward_std": float(rewards.std()),
      "accuracy": float(ctx.run.task.correct(rewards).mean()),
      "response_length": float(lengths.mean()),
      "rollout_s": rollout_s,
      "train_s": train_s,
      "tokens_per_s": float(lengths.sum()) / max(rollout_s, 1e-9),
      "optimizer_steps": float(len(metrics)),
  }
  for k in (metrics[-1] if metrics else ()):  # policy metrics: the mean over the step's updates
    row[k] = float(np.mean([m[k] for m in metrics]))
  return row


def rl_step(ctx: StepContext, rt: RLRuntime, step: int) -> Tuple[RLRuntime, Dict[str, float]]:
  """RL step ``step`` (0-based): rollout -> rewards -> advantages -> updates (-> eval).
  Returns the updated runtimes and the step's metrics row."""
  skey = jax.random.fold_in(ctx.run.key, step)
  t0 = time.time()
  traj, rewards = _collect(ctx, rt.policy, step, skey)
  rollout_s = time.time() - t0
  t1 = time.time()
  batch, v_rows, returns, keep = _train_batch(ctx, rt, traj, rewards, skey, step)
  policy, metrics = _policy_updates(ctx, rt.policy, batch, keep)
  value, value_metrics = _value_update(ctx, rt.value, batch, v_rows, returns, step, keep)
  train_s = time.time() - t1
  skipped = int(sum(float(m.get("skipped", 0.0)) for m in metrics))
  if skipped:  # the update step kept params and optimizer state; say so, don't stop
    _log(
        f"step {step + 1}: non-finite loss or gradient in {skipped} of {len(metrics)} "
        "update(s); skipped, parameters and optimizer state kept"
    )
  row = _row(ctx, traj, rewards, metrics, rollout_s, train_s)
  row.update(value_metrics)
  row.update(minibatch.drop_report(keep, int(ctx.rc.group_size)))
  if ctx.rc.eval_every and (step + 1) % int(ctx.rc.eval_every) == 0:
    ev = _evaluate(ctx, policy)
    row.update({"eval_accuracy": ev["accuracy"], "eval_reward": ev["reward"]})
  return RLRuntime(policy, value), row


def _start(ctx: StepContext, rt: RLRuntime, results: dict) -> Tuple[RLRuntime, int, dict]:
  """Restores the latest checkpoint, or evaluates the starting policy: (rt, step, results)."""
  r = ctx.run
  if r.start is not None:
    items, meta = r.ckpt.restore(r.start, targets=rt.items())
    r.writer.truncate_after(r.start)
    _log(f"resumed from step {r.start}")
    return rt.restored(items), r.start, meta.get("results", results)
  before = _evaluate(ctx, rt.policy)
  _log(f"eval before RL: accuracy {before['accuracy']:.3f} reward {before['reward']:.3f}")
  return rt, 0, dict(results, accuracy_before=before["accuracy"])


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs ``config`` (see configs/tracerl.py) in ``workdir``; returns the final eval metrics."""
  r = open_run(config, workdir, _log)  # validates every key before anything loads
  r.train.require("train"), r.evalset.require("eval")
  model = r.model
  if r.start is None and config.sft.steps > 0:  # warm start before the first RL step
    model = warm_start(r, config, _log)
  ctx, rt = build(config, r, model)
  rt, start, results = _start(ctx, rt, {"dropped_prompts": r.dropped})
  steps = int(ctx.rc.steps)
  for step in tqdm(
      range(start, steps), initial=start, total=steps, desc="rl", disable=jax.process_index() != 0
  ):
    rt, row = rl_step(ctx, rt, step)
    r.writer.write(step + 1, row)
    if (step + 1) % int(config.checkpoint.every) == 0 or step + 1 == steps:
      meta = {
          "data_position": (step + 1) * int(ctx.rc.prompts_per_step),
          "seed": config.seed,
          "results": results,
      }
      r.ckpt.save(step + 1, rt.items(), meta=meta, force=True)
  after = _evaluate(ctx, rt.policy)
  results["accuracy_after"] = after["accuracy"]
  _log(
      f"eval after RL: accuracy {after['accuracy']:.3f} reward {after['reward']:.3f}"
      + (f" (before: {results['accuracy_before']:.3f})" if "accuracy_before" in results else "")
  )
  return close_run(r, workdir, results, model=rt.policy.sampling_model())
