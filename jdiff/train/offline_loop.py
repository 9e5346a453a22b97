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
import functools
import json
import math
import os
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from jdiff.data import load_prompts
from jdiff.data.loading import left_pad
from jdiff.rl.dtrpo import PreferencePairs
from jdiff.rl.method import methods
from jdiff.sharding import shard_state, use_rules
from jdiff.sharding.rules import TRAIN_RULES
from jdiff.train import distributed as dist
from jdiff.train import setup
from jdiff.train.checkpointing import Checkpointer
from jdiff.train.optim import make_optimizer
from jdiff.train.rl_loop import evaluate, local_rewards, rollout, sampling_rules, section_to
from jdiff.train.run_setup import close_run, epoch_order, open_run, warm_start
from jdiff.train.update import batch_shardings, init_train_state, make_update_step

PAIRS_FILE = "pairs.jsonl"
PAIR_FIELDS = ("prompt", "chosen", "rejected")


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
  """``config.offline``: where the pairs come from and how they are trained on."""
  pairs_path: str = ""  # local pairs file; empty = sample them from the warm-started policy
  field_map: Any = None  # {"prompt"|"chosen"|"rejected": "<column>"} for pairs_path
  num_prompts: int = 0  # training prompts used to build pairs (0 = all)
  group_size: int = 8  # completions sampled per prompt
  rollout_batch: int = 16  # prompts per sampler call (one compiled shape)
  max_response_len: int = 0  # response width of a pairs file (0 = its longest response)
  pairs_per_step: int = 16
  epochs: int = 1
  grad_accum: int = 1
  eval_every: int = 0  # update steps between evals (0 = only before and after)
  max_steps: int = 0  # stop after this many update steps (0 = `epochs` worth)

  def __post_init__(self):
    for f in ("group_size", "rollout_batch", "pairs_per_step", "epochs", "grad_accum"):
      if int(getattr(self, f)) < 1:
        raise ValueError(f"config.offline.{f}={getattr(self, f)} must be >= 1")
    if self.group_size < 2 and not self.pairs_path:
      raise ValueError("config.offline.group_size must be >= 2 to pair completions")
    if self.pairs_per_step % self.grad_accum:
      raise ValueError(f"config.offline.pairs_per_step={self.pairs_per_step} must be divisible "
                       f"by config.offline.grad_accum={self.grad_accum} (pairs stay together "
                       "in a micro-batch)")


def offline_config(config) -> OfflineConfig:
  oc = section_to(OfflineConfig, config.offline, "config.offline")
  return dataclasses.replace(oc, field_map=dict(oc.field_map or {}))


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(msg)


# ----------------------------------------------------------------------------- pair sets


def sample_pairs(model, mesh, tokenizer, task, rows, ids, sampler_name, sampler_cfg, oc,
                 config, key):
  """Pairs from ``group_size`` samples per prompt; returns (pair records, stats). Sampling
  runs on ``mesh`` like rl_loop's rollouts (each process decodes and scores its own rows)."""
  g, bs = int(oc.group_size), int(oc.rollout_batch)
  reward_spec = config.task.get("reward") or task.reward
  pairs, all_rewards, ties = [], [], 0
  for start in range(0, len(rows), bs):
    idx = list(range(start, min(start + bs, len(rows))))
    n_real = len(idx)
    idx += [idx[-1]] * (bs - n_real)  # pad the last call to the compiled shape
    prompt_ids = [ids[i] for i in idx for _ in range(g)]
    group_rows = [rows[i] for i in idx for _ in range(g)]
    traj, mine = rollout(model, mesh, sampler_name, sampler_cfg, prompt_ids,
                         model.config.pad_token_id, config.data.max_prompt_len,
                         jax.random.fold_in(key, start))
    tokens, lengths = (np.asarray(x) for x in dist.to_host((traj.tokens, traj.lengths)))
    r = local_rewards(reward_spec, tokenizer, task, tokens, lengths, mine, group_rows)
    r = np.asarray(dist.gather_rows(r, mine, len(prompt_ids)), np.float64)
    for k in range(n_real):
      rg = r[k * g:(k + 1) * g]
      all_rewards.extend(rg.tolist())
      if rg.max() - rg.min() <= 1e-9:  # nothing to prefer
        ties += 1
        continue
      best, worst = k * g + int(np.argmax(rg)), k * g + int(np.argmin(rg))  # first of ties
      chosen, rejected = tokens[best, :lengths[best]], tokens[worst, :lengths[worst]]
      i = idx[k]
      pairs.append(dict(
          prompt=rows[i]["prompt"],
          chosen=setup.decode(tokenizer, chosen[None], [len(chosen)])[0],
          rejected=setup.decode(tokenizer, rejected[None], [len(rejected)])[0],
          prompt_ids=list(map(int, ids[i])), chosen_ids=chosen.tolist(),
          rejected_ids=rejected.tolist(), chosen_reward=float(r[best]),
          rejected_reward=float(r[worst]), prompt_index=i))
  stats = {"sampled_prompts": len(rows), "pairs": len(pairs), "tied_groups": ties,
           "pair_build_reward_mean": float(np.mean(all_rewards)) if all_rewards else math.nan}
  return pairs, stats


def file_pairs(path, field_map, tokenizer, config, eos_id: int, max_response_len: int):
  """Pairs from a local file of (prompt, chosen, rejected) texts; returns (records, stats).

  Prompts are templated like training prompts; responses are tokenized without special tokens
  and end with EOS. Over-long prompts (``data.max_prompt_len``) or responses
  (``max_response_len`` when set) are dropped and counted."""
  rows = load_prompts(path, field_map=field_map)
  for i, row in enumerate(rows):
    for f in PAIR_FIELDS:
      if not isinstance(row.get(f), str):
        raise ValueError(f"pairs file {path!r}: row {i} has no text field {f!r} (columns: "
                         f"{sorted(row)}); map it with config.offline.field_map="
                         f"{{{f!r}: '<column>'}}")
  kept, ids, dropped = setup.encode(tokenizer, rows, config.data.max_prompt_len,
                                    config.data.use_chat_template)
  pairs, too_long = [], 0
  for row, pid in zip(kept, ids):
    resp = {f: tokenizer(row[f], add_special_tokens=False)["input_ids"] + [eos_id]
            for f in ("chosen", "rejected")}
    if max_response_len and max(len(v) for v in resp.values()) > max_response_len:
      too_long += 1
      continue
    pairs.append(dict(prompt=row["prompt"], chosen=row["chosen"], rejected=row["rejected"],
                      prompt_ids=list(map(int, pid)), chosen_ids=resp["chosen"],
                      rejected_ids=resp["rejected"]))
  stats = {"pairs": len(pairs), "dropped_long_prompts": dropped,
           "dropped_long_responses": too_long, "pair_build_reward_mean": math.nan}
  return pairs, stats


def save_pairs(path: str, pairs: List[dict]) -> None:
  """Atomic write: a killed run leaves no half-written pair set to be resumed from."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for p in pairs:
      f.write(json.dumps(p) + "\n")
  os.replace(tmp, path)


def read_pairs(path: str) -> List[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def response_width(pairs, sampler_cfg, oc) -> int:
  """One response width for every batch (one compile): the sampler's completion length for
  sampled pairs, else ``max_response_len`` or the longest response."""
  for f in ("max_tokens", "gen_length"):
    if not oc.pairs_path and hasattr(sampler_cfg, f):
      return int(getattr(sampler_cfg, f))
  longest = max(max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs)
  return int(oc.max_response_len) or longest


def pair_batch(pairs, idx, width: int, prompt_len: int, pad_id: int) -> PreferencePairs:
  """``PreferencePairs`` with prompts left-padded to ``prompt_len`` (a fixed shape)."""
  pids, pmask, _ = left_pad([pairs[i]["prompt_ids"] for i in idx], pad_id, length=prompt_len)
  p = PreferencePairs.from_lists([pairs[i]["prompt_ids"] for i in idx],
                                 [pairs[i]["chosen_ids"] for i in idx],
                                 [pairs[i]["rejected_ids"] for i in idx], pad_id, width=width)
  return dataclasses.replace(p, prompt_ids=pids, prompt_mask=pmask)


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
