"""Whole-config validation before anything is loaded: ``validate_config(config)``.

A real-model run spends minutes loading weights and data before the first place a typo or an
impossible shape would otherwise surface (a sampler setting read at the first rollout, a
grad_accum that does not divide the batch at the first update). This checks every section of an
RL / offline / SFT config with no model, no data and no devices: unknown keys, names that must
be registered (preset, task, reward, sampler, method, SFT objective, optimizer schedule), the
sampler settings against the model family (the preset's architecture stands in for an unset
checkpoint), the mesh shape, and the divisibility constraints of the update step. Every error
is a ``ValueError`` whose message starts with the offending key, ``config.<section>.<key>``.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Mapping, Optional

# Keys each section may hold (the loops, scripts/sft.py, scripts/eval.py read these).
SECTIONS = {
    "model": {"checkpoint", "tokenizer", "family", "preset", "param_dtype", "dtype", "remat",
              "require_checkpoint"},
    "task": {"name", "num_train", "num_eval", "seed", "reward", "generator_kwargs",
             "train_path", "eval_path", "field_map"},
    "data": {"max_prompt_len", "use_chat_template"},
    "sft": {"steps", "batch_size", "max_len", "objective", "pad_in_loss", "grad_accum",
            "options", "optim", "trace"},
    "eval": {"batch_size", "sampler", "threshold"},
    "rl": {"steps", "prompts_per_step", "group_size", "inner_epochs", "grad_accum",
           "std_normalize", "filter_groups", "filter_low", "filter_high", "reset_optimizer",
           "eval_every"},
    "checkpoint": {"every", "max_to_keep"},
    "mesh": {"shape", "axis_names", "sampling_layout"},
}
TOP_LEVEL = {"seed", "tensorboard", "sampler", "method", "value", "optim", "offline"} | set(SECTIONS)


def _err(key: str, why: str) -> ValueError:
  return ValueError(f"config.{key}: {why}")


def _keys(section: Any, known: Iterable[str], where: str) -> None:
  unknown = sorted(set(section) - set(known))
  if unknown:
    raise _err(f"{where}.{unknown[0]}" if where else unknown[0],
               f"unknown key(s) {unknown} in config{'.' + where if where else ''}; known: "
               f"{sorted(known)}")


def _positive(section: Mapping, key: str, where: str, allow_zero: bool = False) -> int:
  v = section.get(key)
  if v is None:
    return 0
  if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
    raise _err(f"{where}.{key}", f"must be an int >= {0 if allow_zero else 1}, got {v!r}")
  return v


def _optim(section: Any, where: str) -> None:
  from jdiff.train.optim import DEFAULTS, make_optimizer
  _keys(section, set(DEFAULTS) | {"learning_rate"}, where)
  try:
    make_optimizer(dict(section))
  except ValueError as e:
    raise _err(where, str(e)) from None


def _model_config(mc):
  """The architecture the sampler and method settings are checked against: the preset's
  (``model.preset`` names the expected architecture even when a checkpoint is given)."""
  from jdiff.models.config import DTYPES, PRESETS, REMAT_POLICIES, preset
  _keys(mc, SECTIONS["model"], "model")
  for k in ("param_dtype", "dtype"):
    if mc.get(k) and mc.get(k) not in DTYPES:
      raise _err(f"model.{k}", f"{mc.get(k)!r}; expected one of {DTYPES}")
  if mc.get("remat") and mc.get("remat") not in REMAT_POLICIES:
    raise _err("model.remat", f"{mc.get('remat')!r}; expected one of {REMAT_POLICIES}")
  name = mc.get("preset") or ""
  if name and name not in PRESETS:
    raise _err("model.preset", f"unknown preset {name!r}; available: {sorted(PRESETS)}")
  if not name and not mc.get("checkpoint") and not mc.get("require_checkpoint"):
    raise _err("model.preset", "set a preset (or config.model.checkpoint)")
  cfg = preset(name) if name else None
  family = mc.get("family") or ""
  if family and cfg is not None and family != cfg.family:
    raise _err("model.family", f"{family!r} but preset {name!r} is a {cfg.family!r} model")
  if family and family not in ("llada", "dream", "sdar"):
    raise _err("model.family", f"{family!r}; expected llada, dream or sdar")
  return cfg, family or (cfg.family if cfg is not None else "")


def _task(tc) -> Any:
  from jdiff.rewards import available_rewards
  from jdiff.tasks import TASKS
  _keys(tc, SECTIONS["task"], "task")
  if tc.get("name") not in TASKS:
    raise _err("task.name", f"unknown task {tc.get('name')!r}; available: {sorted(TASKS)}")
  task = TASKS[tc.name]
  if not tc.get("train_path") and task.generate is None:
    raise _err("task.train_path", f"task {tc.name!r} has no generator: set a local data file")
  reward = tc.get("reward")
  names = [reward] if isinstance(reward, str) else list(reward or [])
  for r in names:
    if isinstance(r, str) and r and r not in available_rewards():
      raise _err("task.reward", f"unknown reward {r!r}; available: {available_rewards()}")
  for k in ("num_train", "num_eval"):
    _positive(tc, k, "task", allow_zero=True)
  return task


def _sampler(sc, where: str, model_cfg, family: str):
  from jdiff.sampling import registry as samplers
  name = sc.get("name") or samplers.DEFAULT_FOR_FAMILY.get(family)
  if name is None:
    raise _err(f"{where}.name", "no sampler name and no model family to pick a default")
  try:
    cfg = samplers.make_config(name, {k: v for k, v in sc.items() if k != "name"})
  except (KeyError, ValueError, TypeError) as e:
    raise _err(where, str(e)) from None
  # The samplers' own checks (gen_length vs block_length, steps per block, ASS's log2 L, the
  # block size of an SDAR model), run here instead of at the first rollout.
  try:
    if name == "block":
      if family and family != "sdar":
        raise ValueError(f"the block sampler needs an sdar/trado model, not {family!r}")
      if model_cfg is not None:
        cfg = cfg.validate(model_cfg)
    elif hasattr(cfg, "validate"):
      params = inspect.signature(cfg.validate).parameters
      if not params:
        cfg = cfg.validate()
      elif model_cfg is not None:
        cfg = cfg.validate(model_cfg)
  except ValueError as e:
    raise _err(where, str(e)) from None
  return name, cfg


def _sft(sc) -> None:
  from jdiff import sft as sft_lib
  _keys(sc, SECTIONS["sft"], "sft")
  steps = _positive(sc, "steps", "sft", allow_zero=True)
  if sc.get("objective") not in sft_lib.names():
    raise _err("sft.objective", f"unknown SFT objective {sc.get('objective')!r}; available: "
               f"{sft_lib.names()}")
  if "options" in sc:
    params = inspect.signature(sft_lib.get(sc.objective).build_batch).parameters
    kw = {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}
    _keys(sc.options or {}, kw, "sft.options")
  if "optim" in sc:
    _optim(sc.optim, "sft.optim")
  if sc.get("objective") == "trace_sft":
    from jdiff.sft.trace_sft import TraceCollectConfig
    from jdiff.train.config import section_to
    section_to(TraceCollectConfig, sc.get("trace") or {}, "config.sft.trace")
  if steps:
    bs = _positive(sc, "batch_size", "sft")
    ga = _positive(sc, "grad_accum", "sft") or 1
    if bs % ga:
      raise _err("sft.grad_accum", f"{ga} does not divide config.sft.batch_size={bs}")
    _positive(sc, "max_len", "sft")


def mesh_shape(shape) -> tuple:
  """``config.mesh.shape`` as a tuple of 3 ints (data, fsdp, tensor), each positive or -1 (at
  most one: it fills the remaining devices); anything else raises naming the key."""
  if shape is None:
    raise _err("mesh.shape", "missing")
  if not isinstance(shape, (tuple, list)) or len(shape) != 3:
    raise _err("mesh.shape", f"{shape!r} must be 3 entries (data, fsdp, tensor)")
  shape = tuple(shape)
  if any(not isinstance(s, int) or isinstance(s, bool) or (s < 1 and s != -1) for s in shape):
    raise _err("mesh.shape", f"{shape}: entries must be positive ints or -1")
  if shape.count(-1) > 1:
    raise _err("mesh.shape", f"{shape}: at most one entry may be -1")
  return shape


def _mesh(mesh) -> None:
  _keys(mesh, SECTIONS["mesh"], "mesh")
  mesh_shape(mesh.get("shape"))
  from jdiff.sharding.rules import SAMPLING_LAYOUTS
  layout = mesh.get("sampling_layout", "gathered")
  if layout not in SAMPLING_LAYOUTS:
    raise _err("mesh.sampling_layout", f"{layout!r}; expected one of {sorted(SAMPLING_LAYOUTS)}")
  names = mesh.get("axis_names")
  if names is not None and len(list(names)) != 3:
    raise _err("mesh.axis_names", f"{names} must name 3 axes")


def _method(config):
  from jdiff.rl.method import methods
  from jdiff.train.config import section_to
  name = config.method.get("name")
  try:
    method = methods.get(name)
  except KeyError as e:
    raise _err("method.name", str(e.args[0])) from None
  try:
    cfg = section_to(method.config_cls, config.method, "config.method", skip=("name",))
  except TypeError as e:
    raise _err("method", str(e)) from None
  except ValueError as e:
    msg = str(e)
    raise ValueError(msg if msg.startswith("config.") else f"config.method: {msg}") from None
  return method, cfg


def _online(config, method, method_cfg, sampler_name, sampler_cfg) -> None:
  if "rl" not in config:
    raise _err("rl", f"method {method.name!r} is online and needs an rl section")
  rc = config.rl
  _keys(rc, SECTIONS["rl"], "rl")
  for k in ("steps", "prompts_per_step", "group_size"):
    _positive(rc, k, "rl")
  ga = _positive(rc, "grad_accum", "rl") or 1
  _positive(rc, "inner_epochs", "rl")
  _positive(rc, "eval_every", "rl", allow_zero=True)
  responses = rc.prompts_per_step * rc.group_size
  if rc.group_size < 2:
    raise _err("rl.group_size", f"{rc.group_size}: group advantages need >= 2 responses")
  # Update rows per step: one per response and round for TraceRL block rows (a fixed number of
  # rounds) and d1; CJ-GRPO has one row per response and recorded step.
  steps = int(getattr(sampler_cfg, "steps", 1)) if method.name == "cj_grpo" else 1
  if (responses * steps) % ga:
    what = "responses" if steps == 1 else f"rows ({responses} responses x {steps} steps)"
    raise _err("rl.grad_accum", f"{ga} does not divide the {responses * steps} {what} per "
               "step (config.rl.prompts_per_step * config.rl.group_size)")
  # (A range outside [0, 1] is allowed: it filters every group, which the loop warns about.)
  if rc.get("filter_groups") and not rc.filter_low <= rc.filter_high:
    raise _err("rl.filter_low", f"{rc.filter_low} > config.rl.filter_high={rc.filter_high}")
  if method.name == "cj_grpo":
    if not getattr(sampler_cfg, "record_states", False):
      raise _err("sampler.record_states", "CJ-GRPO trains on the rollout's intermediate "
                 "states: set it to True")
    n_acc = getattr(method_cfg, "grad_accum", None)
    if method_cfg.step_batching == "accumulate" and (n_acc or steps) % steps:
      raise _err("method.grad_accum", f"{n_acc}: step_batching='accumulate' needs a multiple "
                 f"of the {steps} sampler steps")
    if n_acc is not None and n_acc != ga:
      raise _err("method.grad_accum", f"{n_acc} must equal config.rl.grad_accum={ga} (the "
                 "loss weights are normalised for the update step's split)")
  value = config.get("value")
  if value is not None and value.get("enabled"):
    from jdiff.rl import value as value_lib
    from jdiff.train.config import section_to
    if method.name != "tracerl":
      raise _err("value.enabled", f"the value model trains on TraceRL rows; method is "
                 f"{method.name!r}")
    section_to(value_lib.ValueConfig, value, "config.value", skip=("enabled", "optim"))
    if "optim" in value:
      _optim(value.optim, "value.optim")


def _offline(config, method_cfg) -> None:
  from jdiff.train.config import offline_config
  if "offline" not in config:
    raise _err("offline", f"method {config.method.name!r} is offline and needs an offline "
               "section (see configs/dtrpo.py)")
  try:
    offline_config(config)
  except ValueError as e:
    msg = str(e)
    raise ValueError(msg if msg.startswith("config.") else f"config.offline: {msg}") from None
  for k in ("rl", "value"):
    if k in config:
      raise _err(k, f"unused by the offline loop (method {config.method.name!r}); remove it")


def validate_config(config, kind: Optional[str] = None) -> None:
  """Raises ``ValueError("config.<key>: ...")`` on the first problem; loads nothing.

  ``kind``: ``"rl"`` (online or offline, by the method's ``offline`` flag), ``"sft"``
  (scripts/sft.py: model, task, data, sft, optional eval) or None = ``"rl"`` when the config
  has a method section, else ``"sft"``."""
  kind = kind or ("rl" if "method" in config else "sft")
  _keys(config, TOP_LEVEL, "")
  model_cfg, family = _model_config(config.model)
  task = _task(config.task)
  _keys(config.data, SECTIONS["data"], "data")
  _positive(config.data, "max_prompt_len", "data")
  if "sft" in config:
    _sft(config.sft)
    if config.sft.get("steps") and task.completion is None and kind == "rl":
      raise _err("sft.steps", f"task {task.name!r} has no target completions for the warm "
                 "start; set 0 (warm-start with scripts/sft.py instead)")
  if "checkpoint" in config:
    _keys(config.checkpoint, SECTIONS["checkpoint"], "checkpoint")
    _positive(config.checkpoint, "every", "checkpoint")
  if "mesh" in config:
    _mesh(config.mesh)
  if "eval" in config:
    _keys(config.eval, SECTIONS["eval"], "eval")
    _positive(config.eval, "batch_size", "eval")
    if "sampler" in config.eval:
      _sampler(config.eval.sampler, "eval.sampler", model_cfg, family)
  if "optim" in config:
    _optim(config.optim, "optim")
  if kind == "sft":
    if "sft" not in config:
      raise _err("sft", "an SFT config needs an sft section")
    return
  if "method" not in config:
    raise _err("method", "an RL config needs a method section")
  method, method_cfg = _method(config)
  if "sampler" not in config:
    raise _err("sampler", "an RL config needs a rollout sampler section")
  sampler_name, sampler_cfg = _sampler(config.sampler, "sampler", model_cfg, family)
  if method.name == "dtrpo" and family == "dream":
    raise _err("model.family", "dTRPO does not support shifted-logit (dream) models")
  if method.offline:
    _offline(config, method_cfg)
  else:
    _online(config, method, method_cfg, sampler_name, sampler_cfg)


__all__ = ["SECTIONS", "validate_config"]
