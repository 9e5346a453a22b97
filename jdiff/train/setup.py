"""Loading: a config section turned into one object a run needs (``load_policy``,
``task_rows``, ``encode``, ``sampler_config``). It builds nothing run-wide: assembling a run
(validation, mesh, writer, checkpointer, warm start) is :mod:`jdiff.train.run_setup`'s job, and
scripts/sample.py, sft.py and eval.py call these loaders directly.

``config.model.checkpoint`` set: a local HF or jdiff checkpoint directory (and its
tokenizer). Unset: the embedded default — a character-level tokenizer and a model built
from ``config.model.preset`` with the tokenizer's vocabulary and special ids, so a fresh
clone runs with nothing downloaded.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from flax import nnx

import jdiff
from jdiff.data import load_prompts, synthetic
from jdiff.data.char_tokenizer import build_char_tokenizer, special_token_ids
from jdiff.data.loading import encode_prompt_rows
from jdiff.models.config import preset
from jdiff.models.lora import LoraConfig, apply_lora
from jdiff.sampling import registry as samplers
from jdiff.tasks import Task, get_task

# config.model keys that override the preset's / checkpoint's ModelConfig fields when set.
MODEL_OVERRIDES = (
    "param_dtype",
    "dtype",
    "remat",
    "attention_impl",
    "attention_chunk_q",
    "attention_chunk_k",
)


def load_policy(mc, seed: int = 0):
  """(model, tokenizer) from ``config.model``, with ``config.model.lora``'s adapters if set.

  ``model.require_checkpoint`` (the real-model configs): an empty checkpoint is an error rather
  than a silent fallback to a from-scratch preset, which would train a random 4B/8B model."""
  if mc.get("require_checkpoint") and not mc.get("checkpoint"):
    raise ValueError(
        f"config.model.checkpoint is empty, but this config trains a real model "
        f"(preset {mc.get('preset')!r}, model.require_checkpoint=True) and does not fall back "
        "to the embedded default: pass --config.model.checkpoint=/path/to/local/hf_dir"
    )
  if mc.get("checkpoint"):
    path = os.path.expanduser(mc.checkpoint)
    if not os.path.isdir(path):
      raise FileNotFoundError(f"config.model.checkpoint={mc.checkpoint!r} is not a directory")
    overrides = {k: mc.get(k) for k in MODEL_OVERRIDES if mc.get(k)}
    model = jdiff.from_pretrained(path, family=mc.get("family") or None, **overrides)
    return _with_lora(model, mc, seed), jdiff.load_tokenizer(mc.get("tokenizer") or path)
  tokenizer = build_char_tokenizer()
  ids = special_token_ids(tokenizer)
  vocab = -(-len(tokenizer) // 64) * 64  # round up: a friendlier matmul width
  overrides = dict(
      vocab_size=vocab,
      mask_token_id=ids["mask"],
      eos_token_id=ids["eos"],
      pad_token_id=ids["pad"],
      bos_token_id=None,
  )
  for k in MODEL_OVERRIDES:
    if mc.get(k):
      overrides[k] = mc.get(k)
  model = jdiff.DiffusionLM(preset(mc.preset, **overrides), rngs=nnx.Rngs(seed))
  return _with_lora(model, mc, seed), tokenizer


def _with_lora(model, mc, seed: int):
  """LoRA / QLoRA adapters from ``config.model.lora`` (none when absent or rank 0). Train with
  ``jdiff.models.lora.trainable_filter(model)``; the reference policy is ``lora_reference``."""
  return apply_lora(model, LoraConfig.from_section(mc.get("lora")), seed=seed)


def task_rows(tc) -> Tuple[Task, List[Dict[str, Any]], List[Dict[str, Any]]]:
  """(task, train rows, eval rows) from ``config.task``."""
  task = get_task(tc.name)
  if tc.get("train_path"):
    field_map = dict(tc.get("field_map") or {})
    train = load_prompts(tc.train_path, field_map=field_map, limit=tc.get("num_train") or None)
    evals = (
        load_prompts(tc.eval_path, field_map=field_map, limit=tc.get("num_eval") or None)
        if tc.get("eval_path")
        else []
    )
    return task, train, evals
  if task.generate is None:
    raise ValueError(f"task {tc.name!r} has no generator: set config.task.train_path")
  kwargs = dict(tc.get("generator_kwargs") or {})
  rows = task.generate(tc.num_train + tc.num_eval, tc.seed, **kwargs)
  train, evals = synthetic.split_train_eval(rows, n_eval=tc.num_eval, seed=tc.seed)
  return task, train, evals


def encode(tokenizer, rows, max_prompt_len: int, use_chat_template: bool, system=None):
  """Prompt ids for each row; over-long prompts are dropped and counted."""
  kept, ids, dropped = encode_prompt_rows(
      tokenizer,
      rows,
      max_prompt_len=max_prompt_len,
      use_chat_template=use_chat_template,
      system=system,
  )
  return kept, ids, dropped


def sampler_config(sc, family: str):
  name = sc.get("name") or samplers.DEFAULT_FOR_FAMILY[family]
  settings = {k: v for k, v in sc.items() if k != "name"}
  return name, samplers.make_config(name, settings)
