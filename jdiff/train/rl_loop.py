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
"""

from __future__ import annotations

import functools
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jdiff.rl import advantages as adv_lib
from jdiff.rl import value as value_lib
from jdiff.rl.method import methods, num_iterations, score_all, select_iteration
from jdiff.sharding import shard_state, use_rules
from jdiff.sharding.rules import TRAIN_RULES, sampling_rules
from jdiff.train import distributed as dist
from jdiff.train.config import section_to
from jdiff.train.optim import make_optimizer
from jdiff.train.rollout import evaluate, local_rewards, rollout
from jdiff.train.run_setup import close_run, open_run, warm_start
from jdiff.train.update import (batch_shardings, init_train_state, make_update_step,
                                tree_shardings)


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg)


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs ``config`` (see configs/tracerl.py) in ``workdir``; returns the final eval metrics."""
  rc = config.rl
  r = open_run(config, workdir, _log)  # validates every key before anything loads
  model, tokenizer, task = r.model, r.tokenizer, r.task
  train, evalset = r.train.require("train"), r.evalset.require("eval")
  mc, mesh, writer, ckpt, start = model.config, r.mesh, r.writer, r.ckpt, r.start
  key, eval_key = r.key, r.eval_key
  (sampler_name, sampler_cfg), (eval_name, eval_cfg) = r.sampler, r.eval_sampler
  method = methods.get(config.method.name)
  method_cfg = section_to(method.config_cls, config.method, "config.method", skip=("name",))
  results: Dict[str, Any] = {"dropped_prompts": r.dropped}

  if start is None and config.sft.steps > 0:  # warm start before the first RL step
    model = warm_start(r, config, _log)

  optimizer = make_optimizer(dict(config.optim))
  graphdef, state = init_train_state(model, optimizer, mesh=mesh, rules=TRAIN_RULES)
  loss = functools.partial(method.loss_fn, cfg=method_cfg)
  update = make_update_step(graphdef, optimizer, loss, mesh=mesh, rules=TRAIN_RULES,
                            grad_accum=int(rc.grad_accum))
  score = jax.jit(lambda params, rest, batch: method.logprob_fn(
      nnx.merge(graphdef, params, rest), batch, method_cfg))

  # A re-created optimizer state laid out as the update step's in_shardings expect.
  fresh_opt_state = jax.jit(optimizer.init, out_shardings=tree_shardings(
      jax.eval_shape(optimizer.init, state.params), mesh, TRAIN_RULES))

  def on_mesh(fn, *args):
    """``fn(*args)`` traced with the mesh and training layout active (activation constraints)."""
    with jax.set_mesh(mesh), use_rules(TRAIN_RULES):
      return fn(*args)

  def put(batch):
    """A host batch (the same on every process) as global arrays laid out as the update step
    takes them; jit rejects host arrays that would span other processes' devices."""
    return dist.to_global(batch, batch_shardings(batch, mesh, TRAIN_RULES))

  use_value = bool(config.value.enabled)
  if use_value:
    from jdiff.models.transformer import ValueModel
    from jdiff.rl.tracerl import attention_mask
    vcfg = section_to(value_lib.ValueConfig, config.value, "config.value",
                      skip=("enabled", "optim"))
    voptim = make_optimizer(dict(config.value.optim))
    vgraphdef, vstate = init_train_state(ValueModel.from_policy(model), voptim, mesh=mesh,
                                         rules=TRAIN_RULES)
    vloss = lambda m, b: value_lib.value_loss_fn(m, b, vcfg, attention_mask(b, mc))  # noqa
    vupdate = make_update_step(vgraphdef, voptim, vloss, mesh=mesh, rules=TRAIN_RULES,
                               grad_accum=int(rc.grad_accum))
    vscore = jax.jit(lambda p, r, b: value_lib.value_fn(
        nnx.merge(vgraphdef, p, r), b, attention_mask(b, mc)))

  sample_rules = sampling_rules(config)

  def current_model():
    """The policy for sampling: weights in ``config.mesh.sampling_layout`` (the same arrays,
    not copies, when it agrees with the training layout, e.g. without an fsdp axis)."""
    return nnx.merge(graphdef, shard_state(state.params, mesh, sample_rules),
                     shard_state(state.rest, mesh, sample_rules))

  # d1 / CJ-GRPO / dTRPO: a KL to the frozen starting policy (after the warm start).
  ref_params = jax.tree.map(jnp.copy, state.params) if method.needs_ref(method_cfg) else None

  def saved_items():
    return {"policy": state, **({"value": vstate} if use_value else {}),
            **({"reference": ref_params} if ref_params is not None else {})}

  if start is not None:
    items, meta = ckpt.restore(start, targets=saved_items())
    state = items["policy"]
    vstate = items.get("value")
    ref_params = items.get("reference")
    writer.truncate_after(start)
    results = meta.get("results", results)
    _log(f"resumed from step {start}")
  else:
    start = 0
    before = evaluate(current_model(), mesh, tokenizer, task, evalset, eval_name, eval_cfg,
                      config, eval_key)
    results["accuracy_before"] = before["accuracy"]
    _log(f"eval before RL: accuracy {before['accuracy']:.3f} reward {before['reward']:.3f}")

  group = int(rc.group_size)
  for step in tqdm(range(start, int(rc.steps)), initial=start, total=int(rc.steps),
                   desc="rl", disable=jax.process_index() != 0):
    skey = jax.random.fold_in(key, step)
    t0 = time.time()
    idx = train.batch(step * int(rc.prompts_per_step), int(rc.prompts_per_step))
    prompt_ids = [train.ids[i] for i in idx for _ in range(group)]
    rows = [train.rows[i] for i in idx for _ in range(group)]
    traj, mine = rollout(current_model(), mesh, sampler_name, sampler_cfg, prompt_ids,
                         mc.pad_token_id, config.data.max_prompt_len, jax.random.fold_in(skey, 0))
    traj = dist.to_host(traj)  # the method's batch builder reads whole trajectories
    rewards = local_rewards(config.task.get("reward") or task.reward, tokenizer, task,
                            traj.tokens, traj.lengths, mine, rows)
    rewards = dist.gather_rows(rewards, mine, len(prompt_ids))
    rollout_s = time.time() - t0

    t1 = time.time()
    adv = np.asarray(adv_lib.group_zscore(jnp.asarray(rewards, jnp.float32), group,
                                          std_normalize=bool(rc.std_normalize)))
    if rc.filter_groups:
      adv = adv * adv_lib.group_filter(rewards, group, rc.filter_low, rc.filter_high)
    batch = method.build_batch(traj, adv, jax.random.fold_in(skey, 1), method_cfg, mc)
    if use_value:
      v_rows = dist.to_host(on_mesh(vscore, vstate.params, vstate.rest, put(batch)))
      returns, tok_adv, _ = value_lib.returns_and_advantages(
          batch, v_rows, adv, len(rewards), traj.tokens.shape[1], vcfg)
      value_lib.scatter_to_rows(batch, tok_adv, "advantages")
    batch["old_logp"] = dist.to_host(score_all(
        lambda b: on_mesh(score, state.params, state.rest, put(b)), batch))
    if ref_params is not None:
      batch["ref_logp"] = dist.to_host(score_all(
          lambda b: on_mesh(score, ref_params, state.rest, put(b)), batch))
    if rc.reset_optimizer:
      state = state.replace(opt_state=fresh_opt_state(state.params))
    metrics_acc = []
    # μ inner updates per rollout batch: the method's num_iterations (d1, CJ-GRPO), else
    # rl.inner_epochs; iteration m trains on the m-th stacked input when there are several.
    mu = num_iterations(batch)
    for it in range(int(getattr(method_cfg, "num_iterations", 0) or rc.inner_epochs)):
      state, m = update(state, put(select_iteration(batch, it % mu) if mu > 1 else batch))
      metrics_acc.append(dist.to_host(m))
    value_metrics = {}
    if use_value and step % vcfg.train_value_every == 0:
      vbatch = dict(batch, old_values=v_rows)
      value_lib.scatter_to_rows(vbatch, returns, "returns")
      vstate, vm = vupdate(vstate, put(vbatch))
      vm = dist.to_host(vm)
      value_metrics = {"value_loss": float(vm["loss"]), "value_skipped": float(vm["skipped"])}
    train_s = time.time() - t1
    skipped = int(sum(float(m.get("skipped", 0.0)) for m in metrics_acc))
    if skipped:  # the update step kept params and optimizer state; say so, don't stop
      _log(f"step {step + 1}: non-finite loss or gradient in {skipped} of {len(metrics_acc)} "
           "update(s); skipped, parameters and optimizer state kept")

    lengths = np.asarray(traj.lengths)
    row = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
           "accuracy": float(task.correct(rewards).mean()),
           "response_length": float(lengths.mean()), "rollout_s": rollout_s,
           "train_s": train_s, "tokens_per_s": float(lengths.sum()) / max(rollout_s, 1e-9)}
    for k in metrics_acc[-1]:  # policy metrics: the mean over the step's updates
      row[k] = float(np.mean([m[k] for m in metrics_acc]))
    row.update(value_metrics)
    if rc.eval_every and (step + 1) % int(rc.eval_every) == 0:
      ev = evaluate(current_model(), mesh, tokenizer, task, evalset, eval_name, eval_cfg, config,
                    eval_key)
      row.update({"eval_accuracy": ev["accuracy"], "eval_reward": ev["reward"]})
    writer.write(step + 1, row)
    if (step + 1) % int(config.checkpoint.every) == 0 or step + 1 == int(rc.steps):
      meta = {"data_position": (step + 1) * int(rc.prompts_per_step), "seed": config.seed,
              "results": results}
      ckpt.save(step + 1, saved_items(), meta=meta, force=True)

  after = evaluate(current_model(), mesh, tokenizer, task, evalset, eval_name, eval_cfg, config,
                   eval_key)
  results["accuracy_after"] = after["accuracy"]
  _log(f"eval after RL: accuracy {after['accuracy']:.3f} reward {after['reward']:.3f}"
       + (f" (before: {results['accuracy_before']:.3f})" if "accuracy_before" in results else ""))
  return close_run(r, workdir, results)
