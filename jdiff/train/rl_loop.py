"""The RL loop, in one process: rollout -> rewards -> advantages -> updates -> eval -> checkpoint.

New parameters go straight to the sampler (no disk round trip); the optimizer state is kept
across RL steps unless ``rl.reset_optimizer`` (the reference re-creates AdamW every step).
Randomness is a pure function of (seed, step), and the prompt order of (seed, epoch), so a
run resumed from a checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jdiff.data.loading import left_pad
from jdiff.rewards import compute_rewards
from jdiff.rl import advantages as adv_lib
from jdiff.rl import value as value_lib
from jdiff.rl.method import methods, num_iterations, score_all, select_iteration
from jdiff.sampling import registry as samplers
from jdiff.train import setup
from jdiff.train.checkpointing import Checkpointer
from jdiff.train.metrics import MetricsWriter
from jdiff.train.optim import make_optimizer
from jdiff.train.sft_loop import run_sft, sft_rows
from jdiff.train.update import init_train_state, make_update_step


def section_to(cls, section, where: str, skip=()):
  """A config dataclass from a ConfigDict section; an unknown key is an error naming it."""
  fields = {f.name for f in dataclasses.fields(cls)}
  values = {k: v for k, v in section.items() if k not in skip}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"{where} has unknown key(s) {unknown}; {cls.__name__} accepts "
                     f"{sorted(fields)}")
  return cls(**values)


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg)


class Prompts:
  """Encoded prompts with their task columns; batches in a seeded per-epoch order."""

  def __init__(self, rows, ids, seed):
    if not rows:
      raise ValueError("no prompts left after encoding (all longer than max_prompt_len?)")
    self.rows, self.ids, self.seed = rows, ids, seed

  def batch(self, position: int, size: int):
    n = len(self.rows)
    out = []
    for p in range(position, position + size):
      epoch, i = divmod(p, n)
      order = np.random.default_rng([self.seed, epoch]).permutation(n)
      out.append(int(order[i]))
    return out


def _columns(task, rows):
  return {c: [r[c] for r in rows] for c in task.columns}


def rollout(model, sampler_name, sampler_cfg, prompt_ids, pad_id, prompt_len, key):
  ids, mask, _ = left_pad(prompt_ids, pad_id, length=prompt_len)
  traj = samplers.sample(sampler_name, model, ids, mask, key, sampler_cfg)
  return jax.device_get(traj)


def evaluate(model, tokenizer, task, prompts: Prompts, sampler_name, sampler_cfg, cfg,
             key) -> Dict[str, float]:
  """Accuracy and mean reward over the eval prompts (fixed batches, one compile)."""
  bs = int(cfg.eval.batch_size)
  correct, rewards = [], []
  for start in range(0, len(prompts.rows), bs):
    idx = list(range(start, min(start + bs, len(prompts.rows))))
    idx += [idx[-1]] * (bs - len(idx))  # pad the last batch to the compiled size
    traj = rollout(model, sampler_name, sampler_cfg, [prompts.ids[i] for i in idx],
                   model.config.pad_token_id, cfg.data.max_prompt_len,
                   jax.random.fold_in(key, start))
    texts = setup.decode(tokenizer, traj.tokens, traj.lengths)
    rows = [prompts.rows[i] for i in idx]
    r = compute_rewards(task.reward, texts, **_columns(task, rows)).sum(-1)
    n_real = min(bs, len(prompts.rows) - start)
    rewards.extend(r[:n_real].tolist())
    correct.extend(task.correct(r)[:n_real].tolist())
  return {"accuracy": float(np.mean(correct)), "reward": float(np.mean(rewards))}


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs ``config`` (see configs/tracerl.py) in ``workdir``; returns the final eval metrics."""
  os.makedirs(workdir, exist_ok=True)
  rc = config.rl
  model, tokenizer = setup.load_policy(config.model, config.seed)
  task, train_rows, eval_rows = setup.task_rows(config.task)
  mc = model.config
  kept, ids, dropped = setup.encode(tokenizer, train_rows, config.data.max_prompt_len,
                                    config.data.use_chat_template)
  train = Prompts(kept, ids, config.seed)
  ekept, eids, edropped = setup.encode(tokenizer, eval_rows, config.data.max_prompt_len,
                                       config.data.use_chat_template)
  evalset = Prompts(ekept, eids, config.seed)
  if dropped or edropped:
    _log(f"dropped {dropped} train / {edropped} eval prompts longer than "
         f"{config.data.max_prompt_len} tokens")
  method = methods.get(config.method.name)
  method_cfg = section_to(method.config_cls, config.method, "config.method", skip=("name",))
  sampler_name, sampler_cfg = setup.sampler_config(config.sampler, mc.family)
  eval_name, eval_cfg = setup.sampler_config(config.eval.sampler, mc.family)
  writer = MetricsWriter(workdir, tensorboard=config.get("tensorboard", True))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  ckpt = Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep)
  start = ckpt.latest_step()
  key = jax.random.key(config.seed)
  eval_key = jax.random.fold_in(key, 2**31 - 1)  # the same draws for every evaluation
  results: Dict[str, Any] = {"dropped_prompts": dropped}

  if start is None and config.sft.steps > 0:  # warm start before the first RL step
    completions = [task.completion(r) for r in train.rows]
    rows = sft_rows(tokenizer, train.ids, completions, config.sft.max_len, mc.eos_token_id,
                    mc.pad_token_id, pad_in_loss=config.sft.pad_in_loss)
    model, _ = run_sft(model, rows, config.sft, seed=config.seed, log=_log)

  optimizer = make_optimizer(dict(config.optim))
  graphdef, state = init_train_state(model, optimizer)
  loss = functools.partial(method.loss_fn, cfg=method_cfg)
  update = make_update_step(graphdef, optimizer, loss, grad_accum=int(rc.grad_accum))
  score = jax.jit(lambda params, rest, batch: method.logprob_fn(
      nnx.merge(graphdef, params, rest), batch, method_cfg))

  use_value = bool(config.value.enabled)
  if use_value:
    from jdiff.models.transformer import ValueModel
    from jdiff.rl.tracerl import attention_mask
    vcfg = section_to(value_lib.ValueConfig, config.value, "config.value",
                      skip=("enabled", "optim"))
    voptim = make_optimizer(dict(config.value.optim))
    vgraphdef, vstate = init_train_state(ValueModel.from_policy(model), voptim)
    vloss = lambda m, b: value_lib.value_loss_fn(m, b, vcfg, attention_mask(b, mc))  # noqa
    vupdate = make_update_step(vgraphdef, voptim, vloss, grad_accum=int(rc.grad_accum))
    vscore = jax.jit(lambda p, r, b: value_lib.value_fn(
        nnx.merge(vgraphdef, p, r), b, attention_mask(b, mc)))

  def current_model():
    return nnx.merge(graphdef, state.params, state.rest)

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
    before = evaluate(current_model(), tokenizer, task, evalset, eval_name, eval_cfg, config,
                      eval_key)
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
    traj = rollout(current_model(), sampler_name, sampler_cfg, prompt_ids, mc.pad_token_id,
                   config.data.max_prompt_len, jax.random.fold_in(skey, 0))
    texts = setup.decode(tokenizer, traj.tokens, traj.lengths)
    rewards = compute_rewards(config.task.get("reward") or task.reward, texts,
                              **_columns(task, rows)).sum(-1)
    rollout_s = time.time() - t0

    t1 = time.time()
    adv = np.asarray(adv_lib.group_zscore(jnp.asarray(rewards, jnp.float32), group,
                                          std_normalize=bool(rc.std_normalize)))
    if rc.filter_groups:
      adv = adv * adv_lib.group_filter(rewards, group, rc.filter_low, rc.filter_high)
    batch = method.build_batch(traj, adv, jax.random.fold_in(skey, 1), method_cfg, mc)
    if use_value:
      v_rows = np.asarray(vscore(vstate.params, vstate.rest, batch))
      returns, tok_adv, _ = value_lib.returns_and_advantages(
          batch, v_rows, adv, len(rewards), traj.tokens.shape[1], vcfg)
      value_lib.scatter_to_rows(batch, tok_adv, "advantages")
    batch["old_logp"] = score_all(lambda b: score(state.params, state.rest, b), batch)
    if ref_params is not None:
      batch["ref_logp"] = score_all(lambda b: score(ref_params, state.rest, b), batch)
    if rc.reset_optimizer:
      state = state.replace(opt_state=optimizer.init(state.params))
    metrics_acc = []
    # μ inner updates per rollout batch: the method's num_iterations (d1, CJ-GRPO), else
    # rl.inner_epochs; iteration m trains on the m-th stacked input when there are several.
    mu = num_iterations(batch)
    for it in range(int(getattr(method_cfg, "num_iterations", 0) or rc.inner_epochs)):
      state, m = update(state, select_iteration(batch, it % mu) if mu > 1 else batch)
      metrics_acc.append(jax.device_get(m))
    if use_value and step % vcfg.train_value_every == 0:
      vbatch = dict(batch, old_values=v_rows)
      value_lib.scatter_to_rows(vbatch, returns, "returns")
      vstate, vm = vupdate(vstate, vbatch)
      metrics_acc[-1]["value_loss"] = vm["loss"]
    train_s = time.time() - t1

    lengths = np.asarray(traj.lengths)
    row = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
           "accuracy": float(task.correct(rewards).mean()),
           "response_length": float(lengths.mean()), "rollout_s": rollout_s,
           "train_s": train_s, "tokens_per_s": float(lengths.sum()) / max(rollout_s, 1e-9)}
    for k in metrics_acc[-1]:
      row[k] = float(np.mean([m[k] for m in metrics_acc]))
    if rc.eval_every and (step + 1) % int(rc.eval_every) == 0:
      ev = evaluate(current_model(), tokenizer, task, evalset, eval_name, eval_cfg, config,
                    eval_key)
      row.update({"eval_accuracy": ev["accuracy"], "eval_reward": ev["reward"]})
    writer.write(step + 1, row)
    if (step + 1) % int(config.checkpoint.every) == 0 or step + 1 == int(rc.steps):
      meta = {"data_position": (step + 1) * int(rc.prompts_per_step), "seed": config.seed,
              "results": results}
      ckpt.save(step + 1, saved_items(), meta=meta, force=True)

  after = evaluate(current_model(), tokenizer, task, evalset, eval_name, eval_cfg, config,
                   eval_key)
  results["accuracy_after"] = after["accuracy"]
  _log(f"eval after RL: accuracy {after['accuracy']:.3f} reward {after['reward']:.3f}"
       + (f" (before: {results['accuracy_before']:.3f})" if "accuracy_before" in results else ""))
  ckpt.wait()
  writer.close()
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return results
