"""Preference-pair sets for the offline loop: sampled from the policy or read from a file,
saved atomically in the workdir so a resume trains on the same pairs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import List

import jax
import numpy as np

from jdiff.data import load_prompts
from jdiff.data.loading import left_pad
from jdiff.rl.dtrpo import PreferencePairs
from jdiff.train import distributed as dist
from jdiff.train import setup
from jdiff.train.rollout import decode, local_rewards, reward_options, rollout

PAIRS_FILE = "pairs.jsonl"


PAIR_FIELDS = ("prompt", "chosen", "rejected")


def sample_pairs(
    model, mesh, tokenizer, task, rows, ids, sampler_name, sampler_cfg, oc, config, key
):
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
    traj, mine = rollout(
        model,
        mesh,
        sampler_name,
        sampler_cfg,
        prompt_ids,
        model.config.pad_token_id,
        config.data.max_prompt_len,
        jax.random.fold_in(key, start),
    )
    traj = dist.to_host(traj.replace(states=None))  # states: never used here, possibly large
    tokens, lengths = np.asarray(traj.tokens), np.asarray(traj.lengths)
    r = local_rewards(
        reward_spec,
        tokenizer,
        task,
        tokens,
        lengths,
        mine,
        group_rows,
        **reward_options(config.task, sampler_cfg, traj),
    )
    r = np.asarray(dist.gather_rows(r, mine, len(prompt_ids)), np.float64)
    for k in range(n_real):
      rg = r[k * g : (k + 1) * g]
      all_rewards.extend(rg.tolist())
      if rg.max() - rg.min() <= 1e-9:  # nothing to prefer
        ties += 1
        continue
      best, worst = k * g + int(np.argmax(rg)), k * g + int(np.argmin(rg))  # first of ties
      i = idx[k]
      pairs.append(_pair_record(tokenizer, rows[i]["prompt"], ids[i], traj, r, best, worst, i))
  stats = {
      "sampled_prompts": len(rows),
      "pairs": len(pairs),
      "tied_groups": ties,
      "pair_build_reward_mean": float(np.mean(all_rewards)) if all_rewards else math.nan,
  }
  return pairs, stats


def _pair_record(tokenizer, prompt, prompt_ids, traj, rewards, best, worst, index) -> dict:
  """One sampled pair: the best- and worst-reward completions of a group, with their decoding
  orders (dTRPO's newly_unmasked estimator replays them)."""
  tokens, lengths, steps = (np.asarray(x) for x in (traj.tokens, traj.lengths, traj.step_map))
  chosen, rejected = tokens[best, : lengths[best]], tokens[worst, : lengths[worst]]
  return dict(
      prompt=prompt,
      chosen=decode(tokenizer, chosen[None], [len(chosen)])[0],
      rejected=decode(tokenizer, rejected[None], [len(rejected)])[0],
      prompt_ids=list(map(int, prompt_ids)),
      chosen_ids=chosen.tolist(),
      rejected_ids=rejected.tolist(),
      chosen_reward=float(rewards[best]),
      chosen_steps=steps[best, : lengths[best]].tolist(),
      rejected_steps=steps[worst, : lengths[worst]].tolist(),
      rejected_reward=float(rewards[worst]),
      prompt_index=index,
  )


def file_pairs(path, field_map, tokenizer, config, eos_id: int, max_response_len: int):
  """Pairs from a local file of (prompt, chosen, rejected) texts; returns (records, stats).

  Prompts are templated like training prompts; responses are tokenized without special tokens
  and end with EOS. Over-long prompts (``data.max_prompt_len``) or responses
  (``max_response_len`` when set) are dropped and counted."""
  rows = load_prompts(path, field_map=field_map)
  for i, row in enumerate(rows):
    for f in PAIR_FIELDS:
      if not isinstance(row.get(f), str):
        raise ValueError(
            f"pairs file {path!r}: row {i} has no text field {f!r} (columns: "
            f"{sorted(row)}); map it with config.offline.field_map="
            f"{{{f!r}: '<column>'}}"
        )
  kept, ids, dropped = setup.encode(
      tokenizer, rows, config.data.max_prompt_len, config.data.use_chat_template
  )
  pairs, too_long = [], 0
  for row, pid in zip(kept, ids):
    resp = {
        f: tokenizer(row[f], add_special_tokens=False)["input_ids"] + [eos_id]
        for f in ("chosen", "rejected")
    }
    if max_response_len and max(len(v) for v in resp.values()) > max_response_len:
      too_long += 1
      continue
    pairs.append(
        dict(
            prompt=row["prompt"],
            chosen=row["chosen"],
            rejected=row["rejected"],
            prompt_ids=list(map(int, pid)),
            chosen_ids=resp["chosen"],
            rejected_ids=resp["rejected"],
        )
    )
  stats = {
      "pairs": len(pairs),
      "dropped_long_prompts": dropped,
      "dropped_long_responses": too_long,
      "pair_build_reward_mean": math.nan,
  }
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
  if not oc.pairs_path and hasattr(sampler_cfg, "gen_length"):
    return int(sampler_cfg.gen_length)
  longest = max(max(len(p["chosen_ids"]), len(p["rejected_ids"])) for p in pairs)
  return int(oc.max_response_len) or longest


def pair_batch(pairs, idx, width: int, prompt_len: int, pad_id: int) -> PreferencePairs:
  """``PreferencePairs`` with prompts left-padded to ``prompt_len`` (a fixed shape); the step
  maps when every pair carries them (self-sampled pairs)."""
  pids, pmask, _ = left_pad([pairs[i]["prompt_ids"] for i in idx], pad_id, length=prompt_len)
  has_steps = all("chosen_steps" in pairs[i] for i in idx)
  steps = {
      f: [pairs[i][f] for i in idx] if has_steps else None
      for f in ("chosen_steps", "rejected_steps")
  }
  p = PreferencePairs.from_lists(
      [pairs[i]["prompt_ids"] for i in idx],
      [pairs[i]["chosen_ids"] for i in idx],
      [pairs[i]["rejected_ids"] for i in idx],
      pad_id,
      width=width,
      **steps,
  )
  return dataclasses.replace(p, prompt_ids=pids, prompt_mask=pmask)
