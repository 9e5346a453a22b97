#!/usr/bin/env python
"""Evaluation: python scripts/eval.py --config configs/NAME.py [--config.a.b=v ...]
[--model DIR] [--workdir DIR] [--mode static|dynamic|both] [--threshold 0.9] [--out eval.json]

Accuracy and mean reward of a policy on the config's eval prompts (``config.task``, encoded
as in training with ``config.data``), decoded greedily with ``config.eval.sampler``:

- ``static``: the fixed schedule — the block sampler's ``low_confidence_static`` (n_k tokens
  per step); LLaDA's low-confidence remasking; Dream with a confidence-ordered algorithm
  (``origin`` becomes ``maskgit_plus``, so greedy decoding is deterministic).
- ``dynamic``: confidence-threshold parallel decoding — the block sampler's
  ``low_confidence_dynamic`` and LLaDA's Fast-dLLM threshold decoding at ``--threshold``
  (default ``config.eval.threshold``, else ``config.sampler.threshold``, else 0.9). Dream has
  no threshold decoder: its dynamic mode is the static one.

Which policy:
- ``--model DIR``: an HF or jdiff checkpoint (e.g. ``scripts/sft.py``'s ``DIR/model``),
  replacing ``config.model.checkpoint``; otherwise the config's own model section.
- ``--workdir DIR`` with RL checkpoints (``DIR/checkpoints``, written by scripts/train.py):
  the latest step's policy parameters (item ``policy``, a ``TrainState``) are restored into
  that model, read-only (safe next to a live trainer). A workdir without checkpoints but
  with ``DIR/model`` (an SFT run) evaluates that model.

Prints one accuracy line per mode and writes ``eval.json`` (``--out``; default
``DIR/eval.json`` with ``--workdir``, else ``./eval.json``).
"""

import copy
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402

MODES = ("static", "dynamic")


class InputError(ValueError):
  """A bad command-line input; reported without a traceback."""


def _define_flags():
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
      "config", None, "a configs/*.py file (task, eval, model)", lock_config=True
  )
  flags.DEFINE_string("model", None, "HF or jdiff checkpoint dir (overrides config.model)")
  flags.DEFINE_string("workdir", None, "a train.py workdir: evaluate its latest checkpoint")
  flags.DEFINE_enum("mode", "static", list(MODES) + ["both"], "decoding mode(s)")
  flags.DEFINE_float("threshold", None, "confidence threshold of the dynamic mode")
  flags.DEFINE_string("out", None, "results file (default: WORKDIR/eval.json or ./eval.json)")


def mode_sampler(section, family, mode, threshold):
  """``(name, settings dict)``: ``section`` (a sampler config section) made greedy for ``mode``."""
  from jdiff.sampling import registry as samplers

  settings = dict(section or {})
  name = settings.pop("name", "") or samplers.DEFAULT_FOR_FAMILY[family]
  settings["temperature"] = 0.0
  if name == "block":
    settings["strategy"] = "low_confidence_static" if mode == "static" else "low_confidence_dynamic"
    if mode == "dynamic":
      settings["threshold"] = float(threshold)
  elif name == "llada":
    settings["remasking"] = "low_confidence"
    settings["threshold"] = float(threshold) if mode == "dynamic" else None
  elif name == "dream":
    if settings.get("alg", "origin") == "origin":
      settings["alg"] = "maskgit_plus"  # origin reveals random positions even when greedy
  return name, settings


def _threshold(config, flag):
  if flag is not None:
    return flag
  for section in (
      config.get("eval"),
      (config.get("eval") or {}).get("sampler"),
      config.get("sampler"),
  ):
    if section is not None and section.get("threshold") is not None:
      return section.get("threshold")
  return 0.9


def _resolve(config, model_dir, workdir):
  """``(config with the model source set, Checkpointer or None, step or None)``."""
  config = copy.deepcopy(config)
  ckpt, step = None, None
  if workdir:
    if not os.path.isdir(workdir):
      raise InputError(f"--workdir {workdir!r}: no such directory")
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
      from jdiff.train.checkpointing import Checkpointer

      ckpt = Checkpointer(workdir, read_only=True)
      step = ckpt.latest_step()
    if step is None:
      ckpt = None
      if not model_dir and os.path.isdir(os.path.join(workdir, "model")):
        model_dir = os.path.join(workdir, "model")
      elif not model_dir:
        raise InputError(
            f"--workdir {workdir!r} has neither finalised checkpoints under "
            "checkpoints/ nor a model/ directory"
        )
  if model_dir:
    if not os.path.isdir(model_dir):
      raise InputError(f"--model {model_dir!r}: no such checkpoint directory")
    with config.unlocked():
      config.model.checkpoint = model_dir
  return config, ckpt, step


def _restore_policy(model, config, ckpt, step):
  """The RL policy of checkpoint ``step``: rl_loop saves its TrainState as item 'policy'."""
  from flax import nnx

  from jdiff.train.optim import make_optimizer
  from jdiff.train.update import init_train_state

  if config.get("optim") is None:
    raise InputError(
        "restoring an RL checkpoint needs the run's config.optim section (the "
        "optimizer state is part of the saved TrainState)"
    )
  graphdef, state = init_train_state(model, make_optimizer(dict(config.optim)))
  items, _ = ckpt.restore(step, targets={"policy": state})
  policy = items["policy"]
  return nnx.merge(graphdef, policy.params, policy.rest)


def run(config, model_dir=None, workdir=None, mode="static", threshold=None, out=None, log=print):
  """Evaluates per the module docstring; returns (and writes) the results dict."""
  import time

  if mode not in MODES + ("both",):
    raise InputError(f"--mode={mode!r}; expected one of {list(MODES) + ['both']}")
  if config.get("eval") is None or config.eval.get("sampler") is None:
    raise InputError("the config has no eval.sampler section")
  config, ckpt, step = _resolve(config, model_dir, workdir)  # bad paths fail fast

  import jax

  from jdiff.train import setup
  from jdiff.train.rollout import evaluate
  from jdiff.train.run_setup import Prompts

  model, tokenizer = setup.load_policy(config.model, config.seed)
  if ckpt is not None:
    model = _restore_policy(model, config, ckpt, step)
    log(f"restored the policy of RL step {step} from {ckpt.directory}")
  task, _, eval_rows = setup.task_rows(config.task)
  kept, ids, dropped = setup.encode(
      tokenizer, eval_rows, config.data.max_prompt_len, config.data.use_chat_template
  )
  prompts = Prompts(kept, ids, config.seed)
  key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1)  # rl_loop's eval draws
  thr = _threshold(config, threshold)
  results = {
      "model": config.model.get("checkpoint") or f"preset:{config.model.get('preset')}",
      "workdir": workdir,
      "checkpoint_step": step,
      "task": config.task.name,
      "num_prompts": len(kept),
      "dropped_prompts": dropped,
      "modes": {},
  }
  for m in (MODES if mode == "both" else (mode,)):
    name, settings = mode_sampler(config.eval.sampler, model.config.family, m, thr)
    _, cfg = setup.sampler_config(dict(settings, name=name), model.config.family)
    t0 = time.time()
    ev = evaluate(model, None, tokenizer, task, prompts, name, cfg, config, key)  # 1 device
    seconds = time.time() - t0
    results["modes"][m] = {
        "accuracy": ev["accuracy"],
        "reward": ev["reward"],
        "sampler": name,
        "settings": settings,
        "seconds": seconds,
    }
    results[f"accuracy_{m}"] = ev["accuracy"]
    print(
        f"eval {m}: accuracy {ev['accuracy']:.4f} reward {ev['reward']:.4f} on {len(kept)} "
        f"{config.task.name} prompts (sampler {name}, {seconds:.1f}s)"
    )
  out = out or (os.path.join(workdir, "eval.json") if workdir else "eval.json")
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(results, f, indent=2, default=str)
  log(f"wrote {out}")
  return results


def main(argv):
  del argv
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  F = flags.FLAGS
  try:
    run(
        F.config,
        model_dir=F.model,
        workdir=F.workdir,
        mode=F.mode,
        threshold=F.threshold,
        out=F.out,
    )
  except InputError as e:
    raise SystemExit(f"eval.py: error: {e}") from None


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("config")
  app.run(main)
