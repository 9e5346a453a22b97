"""What a training loop (online ``rl_loop``, offline ``offline_loop``) sets up before its
first step, in one place: the config validated into a typed ``RunConfig``, then a policy,
prompts, sampler settings (loaded by :mod:`jdiff.train.setup`), mesh, metrics writer and
checkpointer; and the SFT warm start both loops share."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, List, Optional

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jdiff.sharding.mesh import make_mesh
from jdiff.train import distributed as dist
from jdiff.train import setup
from jdiff.train.checkpointing import Checkpointer
from jdiff.train.metrics import MetricsWriter
from jdiff.train.sft_loop import run_sft, sft_rows
from jdiff.train.config import RunConfig, mesh_shape, validate_config


def epoch_order(n: int, position: int, size: int, seed: int) -> List[int]:
  """Items ``position .. position+size`` of the concatenated seeded per-epoch permutations of
  ``range(n)``: a run resumed at ``position`` sees exactly what the straight run would."""
  perms = {}  # one permutation per epoch the batch touches
  out = []
  for q in range(position, position + size):
    epoch, i = divmod(q, n)
    if epoch not in perms:
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    out.append(int(perms[epoch][i]))
  return out


class Prompts:
  """Encoded prompts with their task columns; batches in a seeded per-epoch order."""

  def __init__(self, rows, ids, seed):
    self.rows, self.ids, self.seed = rows, ids, seed

  def require(self, what: str) -> "Prompts":
    """Itself, or an error when encoding left no prompts (the loops that need them call it)."""
    if not self.rows:
      raise ValueError(
          f"no {what} prompts left after encoding (none given, or all longer than "
          "config.data.max_prompt_len)"
      )
    return self

  def batch(self, position: int, size: int) -> List[int]:
    return epoch_order(len(self.rows), position, size, self.seed)


def build_mesh(config) -> Mesh:
  """The mesh of ``config.mesh.shape``: 3 ints (data, fsdp, tensor), at most one -1."""
  shape = mesh_shape(config.get("mesh", {}).get("shape", (-1, 1, 1)))
  try:
    mesh = make_mesh(shape)
  except ValueError as e:
    raise ValueError(f"config.mesh.shape={shape}: {e}") from None
  if jax.process_count() > 1 and mesh.devices.size != jax.device_count():
    # A process without a device in the mesh could hold no rows of any batch.
    raise ValueError(
        f"config.mesh.shape={shape} uses {mesh.devices.size} of "
        f"{jax.device_count()} devices; a multi-process mesh must use all of them"
    )
  return mesh


@dataclasses.dataclass
class Run:
  cfg: RunConfig  # the config, validated and typed
  model: Any
  tokenizer: Any
  task: Any
  train: Prompts
  evalset: Prompts
  dropped: int  # train prompts over data.max_prompt_len
  eval_dropped: int
  sampler: tuple  # (name, settings) of config.sampler
  eval_sampler: tuple  # (name, settings) of config.eval.sampler
  mesh: Mesh
  writer: MetricsWriter
  ckpt: Checkpointer
  start: Optional[int]  # the latest checkpointed step, None for a fresh run
  key: jax.Array  # the run's root PRNG key
  eval_key: jax.Array  # the same draws for every evaluation


def open_run(config, workdir: str, log) -> Run:
  """Validates ``config`` (before anything loads), then builds the run's objects; process 0
  writes ``workdir/config.json``."""
  cfg = validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  model, tokenizer = setup.load_policy(config.model, config.seed)
  task, train_rows, eval_rows = setup.task_rows(config.task)
  encoded = [
      setup.encode(tokenizer, rows, config.data.max_prompt_len, config.data.use_chat_template)
      for rows in (train_rows, eval_rows)
  ]
  (kept, ids, dropped), (ekept, eids, edropped) = encoded
  if dropped or edropped:
    log(
        f"dropped {dropped} train / {edropped} eval prompts longer than "
        f"{config.data.max_prompt_len} tokens"
    )
  family = model.config.family
  writer = MetricsWriter(workdir, tensorboard=config.get("tensorboard", True))
  if dist.is_primary():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  ckpt = Checkpointer(workdir, max_to_keep=config.checkpoint.max_to_keep)
  key = jax.random.key(config.seed)
  return Run(
      cfg=cfg,
      model=model,
      tokenizer=tokenizer,
      task=task,
      train=Prompts(kept, ids, config.seed),
      evalset=Prompts(ekept, eids, config.seed),
      dropped=dropped,
      eval_dropped=edropped,
      sampler=setup.sampler_config(config.sampler, family),
      eval_sampler=setup.sampler_config(config.eval.sampler, family),
      mesh=build_mesh(config),
      writer=writer,
      ckpt=ckpt,
      start=ckpt.latest_step(),
      key=key,
      eval_key=jax.random.fold_in(key, 2**31 - 1),
  )


def warm_start(run: Run, config, log) -> Any:
  """``config.sft.steps`` of SFT on the task's target completions (before the first step)."""
  task, mc = run.task, run.model.config
  if task.completion is None:
    raise ValueError(
        f"config.sft.steps={config.sft.steps} but task {task.name!r} has no "
        "target completions; set config.sft.steps=0 (warm-start with "
        "scripts/sft.py and point config.model.checkpoint at its model)"
    )
  completions: List[str] = [task.completion(r) for r in run.train.rows]
  rows = sft_rows(
      run.tokenizer,
      run.train.ids,
      completions,
      config.sft.max_len,
      mc.eos_token_id,
      mc.pad_token_id,
      pad_in_loss=config.sft.pad_in_loss,
  )
  model, _ = run_sft(run.model, rows, config.sft, seed=config.seed, log=log)
  return model


MODEL_DIR = "model"


def write_model(model, workdir: str, checkpoint: str, tokenizer_dir: str, tokenizer) -> str:
  """Writes ``model`` as a jdiff checkpoint at ``workdir/model`` (LoRA adapters merged) with
  its tokenizer, so ``scripts/sample.py --model``, ``eval.py`` and ``convert_hf.py export``
  take it as it is. The tokenizer files come from ``tokenizer_dir`` (else ``checkpoint``); the
  embedded default's tokenizer is saved. Parameters sharded over processes are gathered first."""
  from jax.experimental import multihost_utils

  from jdiff.checkpoint import save_jdiff

  out = os.path.join(workdir, MODEL_DIR)
  if jax.process_count() > 1:
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda a: multihost_utils.process_allgather(a, tiled=True), state)
    model = nnx.merge(graphdef, state)
  if dist.is_primary():
    hf_meta = json.loads(getattr(model, "hf_meta_json", "") or "{}")
    if checkpoint:
      save_jdiff(model, out, hf_meta=hf_meta, tokenizer_dir=tokenizer_dir or checkpoint)
    else:  # the embedded character tokenizer has no files of its own
      save_jdiff(model, out, hf_meta=hf_meta)
      tokenizer.save_pretrained(out)
  return out


def close_run(run: Run, workdir: str, results: dict, model=None) -> dict:
  """Waits for the last checkpoint, closes the metrics, writes the final ``model`` (when
  given) to ``workdir/model`` and (process 0) results.json."""
  run.ckpt.wait()
  run.writer.close()
  if model is not None:
    mc = run.cfg.model
    results["model_dir"] = write_model(model, workdir, mc.checkpoint, mc.tokenizer, run.tokenizer)
  if dist.is_primary():
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
