"""Every program a run of a config executes, as abstract (``ShapeDtypeStruct``) inputs for
:mod:`jdiff.aot`: the rollout sampler, log-prob and value scoring, the value and policy updates,
SFT steps and eval, at the config's true shapes (``scripts/aot.py``).

The training rows' shapes come from the method's own ``build_batch`` on a dummy host
trajectory of two responses (cheap numpy), scaled to the step's responses: every method lays
out a fixed number of rows per response. Nothing is allocated and no checkpoint is read: the
model is ``config.model.preset`` with the config's dtypes, remat and attention settings.
FLOPs are counted from the model dims (XLA's count sees a loop body once; ``docs/design.md``,
ahead-of-time checks).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jdiff import aot
from jdiff.sharding.rules import SAMPLING_RULES, TRAIN_RULES, sampling_rules
from jdiff.train.update import UpdateStep, batch_shardings, tree_shardings

DUMMY_RESPONSES = 2  # responses in the dummy trajectory the row shapes are read from


@dataclasses.dataclass(frozen=True)
class Program:
  """One program to compile and how often an RL (or SFT) step runs it."""

  name: str
  fn: Callable
  args: Tuple[Any, ...]
  in_shardings: Tuple[Any, ...]
  runs_per_step: float
  out_shardings: Any = None
  donate: Tuple[int, ...] = ()
  rules: Any = None  # default TRAIN_RULES
  flops: Optional[float] = None  # per device, for the whole program
  bytes_moved: Optional[float] = None  # per device; for a loop, which XLA counts once


def model_config(config):
  """The preset's :class:`~jdiff.models.ModelConfig` with the config's model overrides."""
  from jdiff.models.config import preset
  from jdiff.train.setup import MODEL_OVERRIDES

  mc = config.model
  if not mc.get("preset"):
    raise ValueError(
        "config.model.preset: the ahead-of-time check builds the model from its " "preset; set one"
    )
  return preset(mc.preset, **{k: mc.get(k) for k in MODEL_OVERRIDES if mc.get(k)})


def _model_cls(config):
  """The model class, with ``config.model.lora``'s adapters applied when set."""
  from jdiff.models import DiffusionLM
  from jdiff.models.lora import LoraConfig, apply_lora

  lora = LoraConfig.from_section(config.model.get("lora"))

  def build(cfg, rngs):
    return apply_lora(DiffusionLM(cfg, rngs=rngs), lora, seed=0)

  return build, lora


def _with_sharding(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def abstract_train_state(graphdef_state, optimizer, mesh, trainable):
  """``(graphdef, TrainState)`` of sharded ShapeDtypeStructs, as ``init_train_state`` lays
  it out (params and optimizer state by TRAIN_RULES)."""
  from jdiff.train.update import TrainState

  graphdef, state = graphdef_state
  model = nnx.merge(graphdef, state)
  graphdef, params, rest = nnx.split(model, trainable, ...)

  def make(params, rest):
    return TrainState(
        params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32), rest=rest
    )

  shapes = jax.eval_shape(make, params, rest)
  return graphdef, _with_sharding(shapes, tree_shardings(shapes, mesh, TRAIN_RULES))


def dummy_trajectory(n: int, p: int, g: int, mc, scfg):
  """A host trajectory of ``n`` full-length responses: every block decoded over the sampler's
  steps; ``states`` (recorded samplers) reveal the completion evenly over ``total_steps``."""
  from jdiff.sampling.common import Trajectory

  pids = np.full((n, p), 7, np.int32)
  toks = np.full((n, g), 8, np.int32)
  blk = int(mc.block_size) if mc.block_causal else g
  per_block = int(getattr(scfg, "steps_per_block", 0) or max(blk, 1))
  j = np.arange(g)
  steps = (j // blk) * per_block + (j % blk) % per_block + 1
  states = None
  if getattr(scfg, "record_states", False):
    s_max = int(scfg.total_steps)
    steps = j * s_max // g + 1
    states = np.stack([np.where(steps <= s + 1, toks, mc.mask_token_id) for s in range(s_max)])
  steps = np.broadcast_to(steps, (n, g)).astype(np.int32)
  return Trajectory(
      prompt_ids=pids,
      prompt_mask=np.ones((n, p), bool),
      tokens=toks,
      step_map=steps,
      logprobs=np.zeros((n, g), np.float32),
      lengths=np.full((n,), g, np.int32),
      num_steps=steps.max(-1),
      states=states,
      raw_tokens=toks,
      raw_step_map=steps,
  )


def rl_step_rows(rc_cfg, mc, responses: int):
  """``{name: (shape, dtype)}`` of one RL step's update batch (the method's rows for
  ``responses`` responses, with old / reference log-probs), and its inner iterations."""
  from jdiff.rl.method import num_iterations, select_iteration

  method, mcfg = rc_cfg.method, rc_cfg.method_cfg
  scfg = rc_cfg.sampler[1]
  p, g = int(rc_cfg.data.max_prompt_len), int(scfg.gen_length)
  traj = dummy_trajectory(DUMMY_RESPONSES, p, g, mc, scfg)
  adv = np.ones((DUMMY_RESPONSES,), np.float32)
  batch = method.build_batch(traj, adv, jax.random.key(0), mcfg, mc)
  mu = num_iterations(batch)
  if mu > 1:
    batch = select_iteration(batch, 0)
  batch = dict(batch, old_logp=np.zeros(np.shape(batch["loss_mask"]), np.float32))
  if method.needs_ref(mcfg):
    batch["ref_logp"] = batch["old_logp"]
  scale = responses // DUMMY_RESPONSES
  shapes = {
      k: ((np.shape(v)[0] * scale,) + np.shape(v)[1:] if np.ndim(v) else (), np.asarray(v).dtype)
      for k, v in batch.items()
  }
  return shapes, mu


def _update_program(name, step: UpdateStep, state, batch, runs, flops) -> Program:
  state_sh = aot.shardings_of(state)
  batch_sh = aot.shardings_of(batch)
  update = step._update  # pylint: disable=protected-access
  out = (state_sh, NamedSharding(_mesh(state_sh), P()))
  return Program(
      name,
      update,
      (state, batch),
      (state_sh, batch_sh),
      runs,
      out_shardings=out,
      donate=(0,),
      flops=flops,
  )


def _mesh(shardings):
  return next(
      s.mesh for s in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  )


def _batch(mesh, shapes):
  return aot.abstract_batch(mesh, {k: (s, d) for k, (s, d) in shapes.items()})


def _rows_tokens(shapes) -> Tuple[int, int]:
  """(rows, tokens per row) of a batch: its widest 2-D integer array (the model's input)."""
  two_d = [s for s, d in shapes.values() if len(s) == 2 and np.issubdtype(d, np.integer)]
  rows, width = max(two_d, key=lambda s: s[1])
  return int(rows), int(width)


def _train_flops(mc, rows: int, width: int, devices: int, remat: bool) -> float:
  """Forward + backward (x3), plus a recomputed forward under full remat, per device."""
  return (4.0 if remat else 3.0) * mc.flops_per_token(width) * rows * width / devices


def _score_program(name, graphdef, state, batch_shapes, chunks, runs, score_fn, mesh, mc):
  shapes = {
      k: ((s[0] // chunks,) + tuple(s[1:]) if s else s, d) for k, (s, d) in batch_shapes.items()
  }
  batch = _batch(mesh, shapes)
  params, rest = state.params, state.rest
  fn = lambda params, rest, b: score_fn(nnx.merge(graphdef, params, rest), b)  # noqa: E731
  rows, width = _rows_tokens(shapes)
  flops = mc.flops_per_token(width) * rows * width / mesh.size
  return Program(
      name,
      fn,
      (params, rest, batch),
      (aot.shardings_of(params), aot.shardings_of(rest), aot.shardings_of(batch)),
      runs,
      flops=flops,
  )


def sampler_program(name, config, mc, mesh, sampler, rows: int, runs: float) -> Program:
  """The rollout / eval sampler on ``rows`` prompts, weights in the sampling layout."""
  sname, scfg = sampler
  build, _ = _model_cls(config)
  rules = sampling_rules(config)
  graphdef, state = aot.abstract_model(mc, mesh, rules=rules, model_cls=build)
  p, g = int(config.data.max_prompt_len), int(scfg.gen_length)
  batch = aot.abstract_batch(
      mesh, {"ids": ((rows, p), jnp.int32), "mask": ((rows, p), bool)}, rules=SAMPLING_RULES
  )

  run = _state_sampler(sname)

  def fn(state, b):
    return run(graphdef, state, b["ids"], b["mask"], jax.random.key(0), scfg)

  iters = _sampler_forwards(mc, scfg, g)
  cached = mc.block_causal and getattr(scfg, "use_cache", True)
  tokens_per_iter = mc.block_size * 2 if cached else p + g
  flops = (mc.flops_per_token(p + g) * rows * (p + iters * tokens_per_iter)) / mesh.size
  # Every forward reads the device's weights and the rows' K/V (cached) or recomputes the
  # whole canvas (about 4 bf16 activations of width hidden per token and layer).
  weights = sum(_shard_bytes(x) for x in jax.tree.leaves(state))
  per_token = 2 * mc.num_kv_heads * mc.head_dim if cached else 4 * mc.hidden_size
  acts = rows * (p + g) * mc.num_layers * per_token * 2 / mesh.size
  return Program(
      name,
      fn,
      (state, batch),
      (aot.shardings_of(state), aot.shardings_of(batch)),
      runs,
      rules=SAMPLING_RULES,
      flops=flops,
      bytes_moved=iters * (weights + acts),
  )


def _shard_bytes(x) -> int:
  return int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize


def _state_sampler(name: str):
  """The sampler's entry on split model state (traceable: it places nothing on a mesh)."""
  if name == "block":
    from jdiff.sampling.block import generate_block

    return generate_block
  if name == "llada":
    from jdiff.sampling.llada import sample_state

    return sample_state
  raise ValueError(
      f"sampler {name!r}: the ahead-of-time check covers the block and llada " "samplers"
  )


def _sampler_forwards(mc, scfg, g: int) -> int:
  """Model calls per row at most: the block sampler's S steps and a commit per block; the
  LLaDA / Dream samplers' ``total_steps`` (``steps``) forwards."""
  if hasattr(scfg, "steps_per_block"):
    blocks = -(-g // int(mc.block_size)) + 1
    return blocks * (int(scfg.steps_per_block) + 1)
  return int(getattr(scfg, "total_steps", 0) or getattr(scfg, "steps", g))


def rl_programs(config, mesh) -> List[Program]:
  """The programs of one online RL step (and its eval) for ``config`` on ``mesh``."""
  from jdiff.train.config import RunConfig
  from jdiff.train.optim import make_optimizer
  from jdiff.models.lora import trainable_filter

  r = RunConfig.from_config(config)
  rc, method, mcfg = r.rl, r.method, r.method_cfg
  mc = model_config(config)
  build, lora = _model_cls(config)
  responses = int(rc.prompts_per_step) * int(rc.group_size)
  rollout_rows = int(rc.rollout_batch) or responses
  progs = [
      sampler_program(
          "rollout_sampler", config, mc, mesh, r.sampler, rollout_rows, responses / rollout_rows
      )
  ]
  shapes, mu = rl_step_rows(r, mc, responses)
  n_iter = int(getattr(mcfg, "num_iterations", 0) or rc.inner_epochs)
  ga = int(rc.grad_accum)
  remat = mc.remat != "none"
  rows, width = _rows_tokens(shapes)
  optimizer = make_optimizer(dict(config.optim))
  abstract = aot.abstract_model(mc, mesh, model_cls=build)
  trainable = trainable_filter(nnx.merge(*abstract)) if lora.rank else nnx.Param
  graphdef, state = abstract_train_state(abstract, optimizer, mesh, trainable)
  score = lambda m, b: method.logprob_fn(m, b, mcfg)  # noqa: E731
  n_scores = mu * (2 if method.needs_ref(mcfg) else 1)
  progs.append(
      _score_program("policy_logprobs", graphdef, state, shapes, ga, ga * n_scores, score, mesh, mc)
  )
  loss = functools.partial(method.loss_fn, cfg=mcfg)
  step = UpdateStep(graphdef, optimizer, loss, mesh=mesh, rules=TRAIN_RULES, grad_accum=ga)
  batch = _batch(mesh, shapes)
  progs.append(
      _update_program(
          "policy_update",
          step,
          state,
          batch,
          n_iter,
          _train_flops(mc, rows, width, mesh.size, remat),
      )
  )
  if r.value_cfg is not None:
    progs += _value_programs(config, r, mc, mesh, shapes, ga, remat)
  if r.eval_sampler is not None:  # not part of the step time: evals run every eval_every
    progs.append(
        sampler_program(
            "eval_sampler", config, mc, mesh, r.eval_sampler, int(config.eval.batch_size), 0.0
        )
    )
  return progs


def _value_programs(config, r, mc, mesh, shapes, ga, remat) -> List[Program]:
  from jdiff.models import DiffusionLM
  from jdiff.models.transformer import ValueModel
  from jdiff.rl import value as value_lib
  from jdiff.rl.tracerl import attention_mask
  from jdiff.train.optim import make_optimizer

  vcfg = r.value_cfg
  optimizer = make_optimizer(dict(config.value.optim))
  cls = lambda cfg, rngs: ValueModel.from_policy(DiffusionLM(cfg, rngs=rngs))  # noqa: E731
  abstract = aot.abstract_model(mc, mesh, model_cls=cls)
  graphdef, state = abstract_train_state(abstract, optimizer, mesh, nnx.Param)
  score = lambda m, b: value_lib.value_fn(m, b, attention_mask(b, mc))  # noqa: E731
  loss = lambda m, b: value_lib.value_loss_fn(m, b, vcfg, attention_mask(b, mc))  # noqa: E731
  vshapes = dict(shapes)
  vshapes["old_values"] = vshapes["returns"] = vshapes["old_logp"]
  rows, width = _rows_tokens(shapes)
  every = 1.0 / max(int(vcfg.train_value_every), 1)
  step = UpdateStep(graphdef, optimizer, loss, mesh=mesh, rules=TRAIN_RULES, grad_accum=ga)
  return [
      _score_program("value_scores", graphdef, state, shapes, ga, ga, score, mesh, mc),
      _update_program(
          "value_update",
          step,
          state,
          _batch(mesh, vshapes),
          every,
          _train_flops(mc, rows, width, mesh.size, remat),
      ),
  ]


def sft_programs(config, mesh) -> List[Program]:
  """One SFT optimizer step (``sft.batch_size`` rows of ``sft.max_len``, ``sft.grad_accum``)."""
  from jdiff import sft as sft_lib
  from jdiff.models.lora import trainable_filter
  from jdiff.train.optim import make_optimizer

  sc = config.sft
  mc = model_config(config)
  build, lora = _model_cls(config)
  bs, length = int(sc.batch_size), int(sc.max_len)
  p = min(int(config.data.max_prompt_len), length // 2)
  rows = sft_lib.make_rows(
      [[7] * p] * 2,
      [[8] * (length - p - 1)] * 2,
      length,
      pad_id=mc.pad_token_id or 0,
      eos_id=mc.eos_token_id or 0,
      pad_in_loss=bool(sc.get("pad_in_loss", False)),
      prompt_width=p,
  )
  objective = sft_lib.get(sc.objective)
  options = dict(sc.get("options") or {})
  shapes = jax.eval_shape(
      functools.partial(objective.build_batch, cfg=mc, **options),
      {k: jnp.asarray(v) for k, v in rows.items()},
      jax.random.key(0),
  )
  shapes = {
      k: ((bs * v.shape[0] // 2,) + v.shape[1:] if v.ndim else (), v.dtype)
      for k, v in shapes.items()
  }
  optimizer = make_optimizer(dict(sc.optim))
  abstract = aot.abstract_model(mc, mesh, model_cls=build)
  trainable = trainable_filter(nnx.merge(*abstract)) if lora.rank else nnx.Param
  graphdef, state = abstract_train_state(abstract, optimizer, mesh, trainable)
  step = UpdateStep(
      graphdef,
      optimizer,
      objective.loss_fn,
      mesh=mesh,
      rules=TRAIN_RULES,
      grad_accum=int(sc.get("grad_accum", 1)),
  )
  n, width = _rows_tokens(shapes)
  return [
      _update_program(
          "sft_update",
          step,
          state,
          _batch(mesh, shapes),
          1,
          _train_flops(mc, n, width, mesh.size, mc.remat != "none"),
      )
  ]


def programs(config, mesh) -> List[Program]:
  """Every program a run of ``config`` executes (RL with its SFT warm start, or SFT)."""
  if "method" not in config:
    return sft_programs(config, mesh)
  from jdiff.rl.method import methods

  if methods.get(config.method.name).offline:
    raise ValueError(
        f"config.method.name={config.method.name!r}: the offline (dTRPO) loop is "
        "not covered by the ahead-of-time check yet"
    )
  progs = rl_programs(config, mesh)
  if int(config.sft.get("steps", 0)) > 0:
    progs += [
        dataclasses.replace(p, name="warm_start_" + p.name, runs_per_step=0.0)
        for p in sft_programs(config, mesh)
    ]
  return progs


def compile_all(
    progs: List[Program], log: Optional[Callable[[str], None]] = None
) -> List[aot.ProgramReport]:
  """Compiles each program; analytic FLOPs / bytes replace XLA's where a program loops."""
  out = []
  for p in progs:
    t0 = time.time()
    rep = aot.compile_program(
        p.name,
        p.fn,
        p.args,
        p.in_shardings,
        p.out_shardings,
        donate_argnums=p.donate,
        rules=p.rules or TRAIN_RULES,
        flops=p.flops,
    )
    if p.bytes_moved is not None:
      rep = dataclasses.replace(rep, bytes_accessed=float(p.bytes_moved))
    out.append(rep)
    if log is not None:
      log(f"compiled {p.name} in {time.time() - t0:.0f} s")
  return out


def step_time(progs: List[Program], reports: List[aot.ProgramReport]) -> float:
  """Roofline seconds of one step: every program times how often a step runs it."""
  return float(sum(p.runs_per_step * r.roofline_s for p, r in zip(progs, reports)))
