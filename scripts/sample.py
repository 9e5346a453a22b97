#!/usr/bin/env python
"""Sampling: python scripts/sample.py --model DIR --prompts IN.jsonl --out OUT.jsonl
[--config configs/NAME.py [--config.sampler.key=value ...]] [--batch_size 8] [--seed 0]
[--num_samples 1] [--no_chat_template]

``--model``: an HF (LLaDA, Dream, SDAR/TraDo) or jdiff checkpoint directory; its tokenizer is
loaded from the same directory (or ``--tokenizer DIR``).

``IN.jsonl``: one JSON object per line, either ``{"prompt": "text"}`` (rendered as one user
turn with the tokenizer's chat template and a generation prompt, unless ``--no_chat_template``)
or ``{"prompt_ids": [ids...]}`` (used as is). Blank lines are skipped.

The sampler and its settings come from the config's ``sampler`` section (e.g.
configs/tracerl.py; configs without one, like configs/sft_*.py, lend their ``eval.sampler``),
overridable with ``--config.sampler.KEY=VALUE``; without ``--config``, the model family's
native sampler (``jdiff.sampling.registry.DEFAULT_FOR_FAMILY``) with its default settings.

``OUT.jsonl``: one JSON object per completion, prompts in input order and each prompt's
``--num_samples`` completions together:
``index`` (0-based prompt index among the non-blank input lines), ``sample``, ``prompt_ids``,
``completion_ids`` (the kept tokens, up to and including the stop token), ``step_map`` (the
decoding step at which each completion token was unmasked: 1-based, counted per sequence
across blocks), ``logprobs`` (temperature-1 log-probability of each token when it was
unmasked), ``num_steps``, ``text`` (decoded without special tokens) and ``prompt`` when the
input gave text.

Prompts are left-padded to one width (the longest prompt rounded up to ``--bucket``) and
batches to one size (the last batch repeats its last row; those rows are dropped), so one
compilation serves every batch. Results are a function of (seed, batch_size, inputs).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402


class InputError(ValueError):
  """A bad command-line input (path, prompts file); reported without a traceback."""


def _define_flags():
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config",
      None,
      "a configs/*.py file whose `sampler` section "
      "picks the sampler (default: the family's own)",
      lock_config=True,
  )
  flags.DEFINE_string("model", None, "HF or jdiff checkpoint directory")
  flags.DEFINE_string("tokenizer", None, "tokenizer directory (default: --model)")
  flags.DEFINE_string("prompts", None, "input .jsonl: {'prompt': text} or {'prompt_ids': [...]}")
  flags.DEFINE_string("out", None, "output .jsonl, one line per completion")
  flags.DEFINE_integer("batch_size", 8, "sequences per sampler call")
  flags.DEFINE_integer("seed", 0, "PRNG seed")
  flags.DEFINE_integer("num_samples", 1, "completions per prompt")
  flags.DEFINE_integer("bucket", 16, "prompts are left-padded to a multiple of this")
  flags.DEFINE_bool(
      "no_chat_template",
      False,
      "encode text prompts as plain text, without the " "tokenizer's chat template",
  )


def read_prompts(path):
  """``[(line_number, {"prompt": str} | {"prompt_ids": [int]})]`` with every line checked."""
  if not os.path.isfile(path):
    raise InputError(f"prompts file not found: {path}")
  from jdiff.data.loading import jsonl_objects

  out = []
  for n, row in jsonl_objects(path, InputError):
    if "prompt_ids" in row:
      ids = row["prompt_ids"]
      if (
          not isinstance(ids, list)
          or not ids
          or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)
      ):
        raise InputError(
            f"{path} line {n}: 'prompt_ids' must be a non-empty list of " "non-negative ints"
        )
    elif "prompt" in row:
      if not isinstance(row["prompt"], str):
        raise InputError(f"{path} line {n}: 'prompt' must be a string")
    else:
      raise InputError(
          f"{path} line {n}: has neither 'prompt' nor 'prompt_ids' " f"(keys: {sorted(row)})"
      )
    out.append((n, row))
  if not out:
    raise InputError(f"{path} holds no prompts")
  return out


def encode(entries, tokenizer, vocab_size, chat_template=True, path="prompts"):
  """Prompt ids of each entry; ids outside the model's vocabulary are an error."""
  from jdiff.data.loading import apply_template

  ids = []
  for n, row in entries:
    if "prompt_ids" in row:
      p = [int(t) for t in row["prompt_ids"]]
    else:
      p = apply_template(tokenizer, row["prompt"], use_chat_template=chat_template)
    if not p:
      raise InputError(f"{path} line {n}: the prompt encodes to no tokens")
    if max(p) >= vocab_size:
      raise InputError(
          f"{path} line {n}: token id {max(p)} >= the model's vocab_size " f"{vocab_size}"
      )
    ids.append(p)
  return ids


def check_dirs(model_dir, tokenizer_dir=None):
  """A missing model or tokenizer directory is an :class:`InputError` naming it."""
  if not model_dir:
    raise InputError("--model is required")
  if not os.path.isdir(model_dir):
    raise InputError(f"--model {model_dir!r}: no such checkpoint directory")
  if tokenizer_dir and not os.path.isdir(tokenizer_dir):
    raise InputError(f"--tokenizer {tokenizer_dir!r}: no such directory")


def load_model(model_dir, tokenizer_dir=None):
  """``(model, tokenizer)``; checkpoint problems become :class:`InputError`."""
  check_dirs(model_dir, tokenizer_dir)
  tok_dir = tokenizer_dir or model_dir
  import jdiff
  from jdiff.checkpoint import CheckpointError

  try:
    return jdiff.from_pretrained(model_dir), jdiff.load_tokenizer(tok_dir)
  except CheckpointError as e:
    raise InputError(str(e)) from None


def generate(
    model, prompt_ids, sampler_name, sampler_cfg, *, batch_size=8, seed=0, num_samples=1, bucket=16
):
  """One record per (prompt, sample), in order; every sampler call has the same shapes."""
  import jax
  import numpy as np

  from jdiff.data.loading import left_pad
  from jdiff.sampling import registry as samplers

  jobs = [(i, s) for i in range(len(prompt_ids)) for s in range(num_samples)]
  width = -(-max(len(p) for p in prompt_ids) // bucket) * bucket
  bs = max(1, min(int(batch_size), len(jobs)))
  key = jax.random.key(seed)
  pad_id = model.config.pad_token_id
  pad_id = model.config.eos_token_id if pad_id is None else pad_id
  records = []
  for start in range(0, len(jobs), bs):
    batch = jobs[start : start + bs]
    real = len(batch)
    batch = batch + [batch[-1]] * (bs - real)  # pad to the compiled batch size
    ids, mask, _ = left_pad([prompt_ids[i] for i, _ in batch], pad_id, length=width)
    traj = jax.device_get(
        samplers.sample(sampler_name, model, ids, mask, jax.random.fold_in(key, start), sampler_cfg)
    )
    tokens, steps, logps = (np.asarray(a) for a in (traj.tokens, traj.step_map, traj.logprobs))
    lengths, nsteps = np.asarray(traj.lengths), np.asarray(traj.num_steps)
    for r, (i, s) in enumerate(batch[:real]):
      n = int(lengths[r])
      records.append(
          {
              "index": i,
              "sample": s,
              "prompt_ids": list(map(int, prompt_ids[i])),
              "completion_ids": tokens[r, :n].tolist(),
              "step_map": steps[r, :n].tolist(),
              "logprobs": [float(x) for x in logps[r, :n]],
              "num_steps": int(nsteps[r]),
          }
      )
  return records


def sample_file(
    model_dir,
    prompts_path,
    out_path,
    sampler=None,
    *,
    batch_size=8,
    seed=0,
    num_samples=1,
    chat_template=True,
    tokenizer_dir=None,
    bucket=16,
    log=print,
):
  """Samples every prompt of ``prompts_path`` into ``out_path``; returns the records.

  ``sampler``: a mapping of sampler settings with an optional ``name`` (a config's
  ``sampler`` section); None or no name: the model family's default sampler.
  """
  import time

  if not out_path:
    raise InputError("--out is required")
  if num_samples < 1 or batch_size < 1:
    raise InputError(f"--num_samples={num_samples} and --batch_size={batch_size} must be >= 1")
  check_dirs(model_dir, tokenizer_dir)  # fail fast, before any heavy import
  entries = read_prompts(prompts_path)
  model, tokenizer = load_model(model_dir, tokenizer_dir)

  from jdiff.train import setup

  mc = model.config
  name, cfg = setup.sampler_config(dict(sampler or {}), mc.family)
  prompt_ids = encode(entries, tokenizer, mc.vocab_size, chat_template, prompts_path)
  t0 = time.time()
  records = generate(
      model,
      prompt_ids,
      name,
      cfg,
      batch_size=batch_size,
      seed=seed,
      num_samples=num_samples,
      bucket=bucket,
  )
  seconds = time.time() - t0
  for rec in records:
    rec["text"] = tokenizer.decode(rec["completion_ids"], skip_special_tokens=True)
    row = entries[rec["index"]][1]
    if "prompt" in row and "prompt_ids" not in row:
      rec["prompt"] = row["prompt"]
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  with open(out_path, "w") as f:
    for rec in records:
      f.write(json.dumps(rec) + "\n")
  ntok = sum(len(r["completion_ids"]) for r in records)
  log(
      f"{len(records)} completions ({len(entries)} prompts x {num_samples}) with sampler "
      f"{name!r}: {ntok / max(len(records), 1):.1f} tokens and "
      f"{sum(r['num_steps'] for r in records) / max(len(records), 1):.1f} steps on average, "
      f"{seconds:.1f}s (compilation included) -> {out_path}"
  )
  return records


def main(argv):
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  F = flags.FLAGS
  config = F.config
  sampler = None
  if config is not None:  # its rollout sampler, else its eval sampler (SFT configs)
    sampler = config.get("sampler") or (config.get("eval") or {}).get("sampler")
    if sampler is None:
      raise SystemExit(
          f"sample.py: error: {F['config'].config_filename} has neither a "
          "`sampler` nor an `eval.sampler` section"
      )
  try:
    sample_file(
        F.model,
        F.prompts,
        F.out,
        sampler,
        batch_size=F.batch_size,
        seed=F.seed,
        num_samples=F.num_samples,
        chat_template=not F.no_chat_template,
        tokenizer_dir=F.tokenizer,
        bucket=F.bucket,
    )
  except InputError as e:
    raise SystemExit(f"sample.py: error: {e}") from None


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["model", "prompts", "out"])
  app.run(main)
