"""The run config, typed and validated once: ``RunConfig.from_config(config, kind)``.

Each section of the ConfigDict (see configs/*.py) has one frozen dataclass here; its fields
are the section's schema (the keys a section may hold), so the schema exists once. Building a
:class:`RunConfig` checks every section with no model, no data and no devices: unknown keys,
names that must be registered (preset, task, reward, sampler, method, SFT objective, advantage
estimator, optimizer schedule), the sampler settings against the model (the preset's
architecture stands in for an unset checkpoint), the mesh shape and the divisibility
constraints of the update step. A method and a sampler check their own settings
(``Method.check``, ``sampler_cfg.validate(model_config)``). Every error is a ``ValueError``
whose message starts with the offending key, ``config.<section>.<key>``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional, Tuple


def section_to(cls, section, where: str, skip=()):
  """A config dataclass from a ConfigDict section; an unknown key is an error naming it."""
  fields = {f.name for f in dataclasses.fields(cls)}
  values = {k: v for k, v in section.items() if k not in skip}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(
        f"{where} has unknown key(s) {unknown}; {cls.__name__} accepts " f"{sorted(fields)}"
    )
  return cls(**values)


def _err(key: str, why: str) -> ValueError:
  return ValueError(f"config.{key}: {why}")


def _keys(section: Any, known: Iterable[str], where: str) -> None:
  unknown = sorted(set(section) - set(known))
  if unknown:
    raise _err(
        f"{where}.{unknown[0]}" if where else unknown[0],
        f"unknown key(s) {unknown} in config{'.' + where if where else ''}; known: "
        f"{sorted(known)}",
    )


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


def _section(cls, section: Any, where: str, skip: Iterable[str] = ()):
  """``cls`` from a ConfigDict section after checking its keys against ``cls``'s fields."""
  _keys(section, schema(cls), where)
  return cls(**{k: v for k, v in section.items() if k not in set(skip)})


def schema(cls) -> set:
  """The keys a section may hold: its dataclass's fields."""
  return {f.name for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class ModelSection:
  """``config.model``."""

  checkpoint: str = ""  # a local HF or jdiff checkpoint directory; empty: the preset
  tokenizer: str = ""
  family: str = ""  # llada | dream | sdar; empty: the preset's (or the checkpoint's)
  preset: str = ""
  param_dtype: str = ""
  dtype: str = ""
  remat: str = ""
  # Training forwards over MaskSpec rows: "dense" or "chunked" (flash-style tiles, so no
  # [rows, heads, N, N] score tensor); chunk sizes 0 = the preset's. A memory choice.
  attention_impl: str = ""
  attention_chunk_q: int = 0
  attention_chunk_k: int = 0
  require_checkpoint: bool = False  # the real-model configs: no silent fallback to a preset
  lora: Any = None  # LoRA / QLoRA adapter settings (jdiff.models.lora.LoraConfig)


REWARD_TEXTS = ("to_eos", "whole")  # config.task.reward_text


@dataclasses.dataclass(frozen=True)
class TaskSection:
  """``config.task``."""

  name: str = ""
  num_train: int = 0
  num_eval: int = 0
  seed: int = 0
  reward: Any = None  # a reward spec; empty: the task's
  generator_kwargs: Any = None
  train_path: str = ""
  eval_path: str = ""
  field_map: Any = None
  # TraceRL's length penalty: the rollout reward also gets each response's length and the
  # sampler's gen_length (the math reward scores a response reaching gen_length - 5 as wrong).
  length_penalty: bool = False
  # The text a rollout is scored on: "to_eos" (up to the first stop token) or "whole" (the
  # whole canvas decoded with special tokens skipped, as d1 / CJ-GRPO do).
  reward_text: str = "to_eos"


@dataclasses.dataclass(frozen=True)
class DataSection:
  """``config.data``."""

  max_prompt_len: int = 0
  use_chat_template: bool = False


@dataclasses.dataclass(frozen=True)
class SFTSection:
  """``config.sft``: the warm start (and scripts/sft.py)."""

  steps: int = 0
  batch_size: int = 0
  max_len: int = 0
  objective: str = ""
  pad_in_loss: bool = False
  grad_accum: int = 1
  options: Any = None  # the objective's build_batch keyword options
  optim: Any = None
  trace: Any = None  # trace_sft: how trajectories are collected (sft.trace_sft.TraceCollectConfig)


@dataclasses.dataclass(frozen=True)
class EvalSection:
  """``config.eval``."""

  batch_size: int = 0
  sampler: Any = None
  threshold: Any = None


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
  """``config.checkpoint``."""

  every: int = 0
  max_to_keep: int = 0


@dataclasses.dataclass(frozen=True)
class MeshSection:
  """``config.mesh``."""

  shape: Any = (-1, 1, 1)  # (data, fsdp, tensor), at most one -1
  axis_names: Any = None
  sampling_layout: str = "gathered"


@dataclasses.dataclass(frozen=True)
class ValueSection:
  """``config.value``: the switch and optimizer of TraceRL's value model; its loss settings
  are :class:`jdiff.rl.value.ValueConfig`'s fields."""

  enabled: bool = False
  optim: Any = None


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """``config.rl``: the online loop's schedule (see configs/tracerl.py)."""

  steps: int = 20
  prompts_per_step: int = 8
  group_size: int = 8  # responses per prompt (the advantage groups)
  inner_epochs: int = 1  # epochs over the rollout batch (a method's num_iterations wins)
  # Rows per optimizer step, walked in rollout order (TraceRL's reference: batch_size x devices
  # x grad_accum); 0 = the whole rollout batch in one step.
  rows_per_update: int = 0
  grad_accum: int = 1
  std_normalize: bool = True
  filter_groups: bool = False  # drop groups whose accuracy is outside [filter_low, filter_high]
  filter_low: float = 0.2
  filter_high: float = 0.8
  reset_optimizer: bool = False  # a fresh optimizer state every step (the reference's AdamW)
  eval_every: int = 0  # RL steps between evals (0 = only before and after)
  advantage: str = "group_zscore"  # a name in jdiff.rl.registry.advantage_estimators
  # Rows (responses) per rollout sampler call, so one call's KV cache fits (0 = all at once);
  # the trajectory does not depend on it (each row draws with its global index's keys).
  rollout_batch: int = 0

  def __post_init__(self):
    rows, rb = int(self.prompts_per_step) * int(self.group_size), int(self.rollout_batch)
    if rb < 0 or (0 < rb < rows and rows % rb):
      raise ValueError(
          f"config.rl.rollout_batch={rb} must be 0 or divide the "
          f"{rows} rows of a step (prompts_per_step x group_size)"
      )


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
      raise ValueError(
          f"config.offline.pairs_per_step={self.pairs_per_step} must be divisible "
          f"by config.offline.grad_accum={self.grad_accum} (pairs stay together "
          "in a micro-batch)"
      )


def offline_config(config) -> OfflineConfig:
  oc = section_to(OfflineConfig, config.offline, "config.offline")
  return dataclasses.replace(oc, field_map=dict(oc.field_map or {}))


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


TOP_LEVEL = {
    "seed",
    "tensorboard",
    "sampler",
    "method",
    "value",
    "optim",
    "offline",
    "model",
    "task",
    "data",
    "sft",
    "eval",
    "rl",
    "checkpoint",
    "mesh",
}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """A whole config, typed: one dataclass per section (None for an absent optional one)."""

  kind: str  # "rl" (online or offline) or "sft"
  seed: int
  model: ModelSection
  model_config: Any  # the preset's ModelConfig (None without a preset)
  family: str  # the model family: config.model.family, else the preset's
  task: TaskSection
  data: DataSection
  sft: Optional[SFTSection] = None
  eval: Optional[EvalSection] = None
  eval_sampler: Optional[Tuple[str, Any]] = None  # (name, sampler config)
  checkpoint: Optional[CheckpointSection] = None
  mesh: Optional[MeshSection] = None
  optim: Optional[dict] = None
  method: Any = None  # the registered Method
  method_cfg: Any = None  # its config dataclass
  sampler: Optional[Tuple[str, Any]] = None  # (name, sampler config) of the rollouts
  rl: Optional[RLConfig] = None
  offline: Optional[OfflineConfig] = None
  value: Optional[ValueSection] = None
  value_cfg: Any = None  # jdiff.rl.value.ValueConfig, when config.value.enabled

  @classmethod
  def from_config(cls, config, kind: Optional[str] = None) -> "RunConfig":
    """Validates ``config`` (see :func:`validate_config`) and returns it typed."""
    kind = kind or ("rl" if "method" in config else "sft")
    _keys(config, TOP_LEVEL, "")
    model, model_cfg, family = _model(config.model)
    task = _task(config.task)
    data = _section(DataSection, config.data, "data")
    _positive(config.data, "max_prompt_len", "data")
    parts = dict(
        kind=kind,
        seed=config.get("seed", 0),
        model=model,
        model_config=model_cfg,
        family=family,
        task=task,
        data=data,
    )
    parts.update(_common(config, kind, model_cfg, family))
    if kind == "sft":
      if "sft" not in config:
        raise _err("sft", "an SFT config needs an sft section")
      return cls(**parts)
    return _rl(cls, config, parts)


def _model(mc) -> Tuple[ModelSection, Any, str]:
  """The section, and the architecture the sampler and method settings are checked against:
  the preset's (``model.preset`` names the expected architecture even with a checkpoint)."""
  from jdiff.models.config import DTYPES, PRESETS, REMAT_POLICIES, preset

  section = _section(ModelSection, mc, "model")
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
  if mc.get("lora") is not None:
    from jdiff.models.lora import LoraConfig

    LoraConfig.from_section(mc.lora)  # raises naming config.model.lora.<key>
  return section, cfg, family or (cfg.family if cfg is not None else "")


def _task(tc) -> TaskSection:
  from jdiff.rewards import available_rewards
  from jdiff.tasks import TASKS

  section = _section(TaskSection, tc, "task")
  if tc.get("name") not in TASKS:
    raise _err("task.name", f"unknown task {tc.get('name')!r}; available: {sorted(TASKS)}")
  if not tc.get("train_path") and TASKS[tc.name].generate is None:
    raise _err("task.train_path", f"task {tc.name!r} has no generator: set a local data file")
  reward = tc.get("reward")
  names = [reward] if isinstance(reward, str) else list(reward or [])
  for r in names:
    if isinstance(r, str) and r and r not in available_rewards():
      raise _err("task.reward", f"unknown reward {r!r}; available: {available_rewards()}")
  for k in ("num_train", "num_eval"):
    _positive(tc, k, "task", allow_zero=True)
  _reward_switches(section, [r for r in names if r] or TASKS[tc.name].reward)
  return section


def _reward_switches(section: TaskSection, spec) -> None:
  """``task.reward_text`` is a known mode; ``task.length_penalty`` needs a reward that reads
  ``max_tokens`` (else the switch would silently do nothing)."""
  import inspect
  from jdiff.rewards import get_reward

  if section.reward_text not in REWARD_TEXTS:
    raise _err("task.reward_text", f"{section.reward_text!r}; expected one of {REWARD_TEXTS}")
  if not isinstance(section.length_penalty, bool):
    raise _err("task.length_penalty", f"must be a bool, got {section.length_penalty!r}")
  if not section.length_penalty:
    return
  spec = [spec] if isinstance(spec, str) or callable(spec) else list(spec)
  fns = [get_reward(r) if isinstance(r, str) else r for r in spec]

  def reads(fn):
    params = inspect.signature(fn).parameters.values()
    return any(p.name == "max_tokens" or p.kind is p.VAR_KEYWORD for p in params)

  if not any(reads(fn) for fn in fns):
    raise _err(
        "task.length_penalty",
        f"no reward in {spec} takes max_tokens / " "response_length (the math reward does)",
    )


def _sampler(sc, where: str, model_cfg, family: str):
  """(name, sampler config) checked by the sampler itself against the model config."""
  from jdiff.sampling import registry as samplers

  name = sc.get("name") or samplers.DEFAULT_FOR_FAMILY.get(family)
  if name is None:
    raise _err(f"{where}.name", "no sampler name and no model family to pick a default")
  try:
    cfg = samplers.make_config(name, {k: v for k, v in sc.items() if k != "name"})
    # gen_length vs block_length, steps per block, ASS's log2 L, the block size of an SDAR
    # model: checked here instead of at the first rollout.
    cfg = cfg.validate(model_cfg)
  except (KeyError, ValueError, TypeError) as e:
    raise _err(where, str(e)) from None
  return name, cfg


def _sft(sc) -> SFTSection:
  from jdiff import sft as sft_lib

  section = _section(SFTSection, sc, "sft")
  steps = _positive(sc, "steps", "sft", allow_zero=True)
  if sc.get("objective") not in sft_lib.names():
    raise _err(
        "sft.objective",
        f"unknown SFT objective {sc.get('objective')!r}; available: " f"{sft_lib.names()}",
    )
  if "options" in sc:
    _keys(sc.options or {}, sft_lib.options(sc.objective), "sft.options")
  if "optim" in sc:
    _optim(sc.optim, "sft.optim")
  if "trace" in sc and sc.get("objective") != "trace_sft":
    raise _err("sft.trace", f"only the trace_sft objective reads it, not {sc.get('objective')!r}")
  if sc.get("objective") == "trace_sft":
    from jdiff.sft.trace_sft import TraceCollectConfig

    section_to(TraceCollectConfig, sc.get("trace") or {}, "config.sft.trace")
  if steps:
    bs = _positive(sc, "batch_size", "sft")
    ga = _positive(sc, "grad_accum", "sft") or 1
    if bs % ga:
      raise _err("sft.grad_accum", f"{ga} does not divide config.sft.batch_size={bs}")
    _positive(sc, "max_len", "sft")
  return section


def _mesh(mesh) -> MeshSection:
  from jdiff.sharding.rules import SAMPLING_LAYOUTS

  section = _section(MeshSection, mesh, "mesh")
  mesh_shape(mesh.get("shape"))
  layout = mesh.get("sampling_layout", "gathered")
  if layout not in SAMPLING_LAYOUTS:
    raise _err("mesh.sampling_layout", f"{layout!r}; expected one of {sorted(SAMPLING_LAYOUTS)}")
  names = mesh.get("axis_names")
  if names is not None and len(list(names)) != 3:
    raise _err("mesh.axis_names", f"{names} must name 3 axes")
  return section


def _common(config, kind: str, model_cfg, family: str) -> dict:
  """The sections both kinds may hold: sft, checkpoint, mesh, eval, optim."""
  parts = {}
  if "sft" in config:
    parts["sft"] = _sft(config.sft)
    if config.sft.get("steps") and kind == "rl":
      from jdiff.tasks import TASKS

      task = TASKS[config.task.name]
      if task.completion is None:
        raise _err(
            "sft.steps",
            f"task {task.name!r} has no target completions for the warm "
            "start; set 0 (warm-start with scripts/sft.py instead)",
        )
  if "checkpoint" in config:
    parts["checkpoint"] = _section(CheckpointSection, config.checkpoint, "checkpoint")
    _positive(config.checkpoint, "every", "checkpoint")
  if "mesh" in config:
    parts["mesh"] = _mesh(config.mesh)
  if "eval" in config:
    parts["eval"] = _section(EvalSection, config.eval, "eval")
    _positive(config.eval, "batch_size", "eval")
    if "sampler" in config.eval:
      parts["eval_sampler"] = _sampler(config.eval.sampler, "eval.sampler", model_cfg, family)
  if "optim" in config:
    _optim(config.optim, "optim")
    parts["optim"] = dict(config.optim)
  return parts


def _method(config):
  from jdiff.rl.method import methods

  name = config.method.get("name")
  if "std_normalize" in config.method:
    raise _err(
        "method.std_normalize",
        "not a method setting (it did nothing there); the "
        "advantage's std division is config.rl.std_normalize",
    )
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


def _online(config, method, method_cfg, sampler_cfg) -> dict:
  from jdiff.rl.registry import advantage_estimators

  if "rl" not in config:
    raise _err("rl", f"method {method.name!r} is online and needs an rl section")
  rc = config.rl
  section = _section(RLConfig, rc, "rl")
  for k in ("steps", "prompts_per_step", "group_size"):
    _positive(rc, k, "rl")
  ga = _positive(rc, "grad_accum", "rl") or 1
  _positive(rc, "inner_epochs", "rl")
  rpu = _positive(rc, "rows_per_update", "rl", allow_zero=True) or 0
  if rpu % ga:
    raise _err("rl.rows_per_update", f"{rpu} is not a multiple of config.rl.grad_accum={ga}")
  if rpu and not method.step_weighted:
    raise _err(
        "rl.rows_per_update",
        f"{rpu}: method {method.name!r} normalises its loss over "
        "the whole rollout batch; minibatching needs 0",
    )
  _positive(rc, "eval_every", "rl", allow_zero=True)
  responses = rc.prompts_per_step * rc.group_size
  if rc.group_size < 2:
    raise _err("rl.group_size", f"{rc.group_size}: group advantages need >= 2 responses")
  # Update rows per step: one per response (and round, for TraceRL's fixed number of rounds),
  # or the method's own count (CJ-GRPO: one per response and recorded step).
  steps = int(method.rows_per_response(method_cfg, sampler_cfg))
  if (responses * steps) % ga:
    what = "responses" if steps == 1 else f"rows ({responses} responses x {steps} steps)"
    raise _err(
        "rl.grad_accum",
        f"{ga} does not divide the {responses * steps} {what} per "
        "step (config.rl.prompts_per_step * config.rl.group_size)",
    )
  # (A range outside [0, 1] is allowed: it filters every group, which the loop warns about.)
  if rc.get("filter_groups") and not rc.filter_low <= rc.filter_high:
    raise _err("rl.filter_low", f"{rc.filter_low} > config.rl.filter_high={rc.filter_high}")
  # trace_gae is the value model's token-level estimator, not a group one.
  if section.advantage not in advantage_estimators or section.advantage == "trace_gae":
    raise _err(
        "rl.advantage",
        f"unknown group advantage estimator {section.advantage!r}; "
        f"available: {[n for n in advantage_estimators.names() if n != 'trace_gae']}",
    )
  return dict(rl=section, **_value(config, method))


def _value(config, method) -> dict:
  value = config.get("value")
  if value is None:
    return {}
  from jdiff.rl import value as value_lib

  _keys(value, schema(ValueSection) | schema(value_lib.ValueConfig), "value")
  optim = value.get("optim")
  section = ValueSection(
      enabled=bool(value.get("enabled", False)), optim=None if optim is None else dict(optim)
  )
  if not section.enabled:
    return dict(value=section)
  if not method.value_model:
    raise _err(
        "value.enabled", f"the value model trains on TraceRL rows; method is " f"{method.name!r}"
    )
  vcfg = section_to(value_lib.ValueConfig, value, "config.value", skip=("enabled", "optim"))
  if "optim" in value:
    _optim(value.optim, "value.optim")
  return dict(value=section, value_cfg=vcfg)


def _offline(config) -> dict:
  if "offline" not in config:
    raise _err(
        "offline",
        f"method {config.method.name!r} is offline and needs an offline "
        "section (see configs/dtrpo.py)",
    )
  try:
    oc = offline_config(config)
  except ValueError as e:
    msg = str(e)
    raise ValueError(msg if msg.startswith("config.") else f"config.offline: {msg}") from None
  for k in ("rl", "value"):
    if k in config:
      raise _err(k, f"unused by the offline loop (method {config.method.name!r}); remove it")
  return dict(offline=oc)


def _rl(cls, config, parts: dict) -> RunConfig:
  """The RL part of :meth:`RunConfig.from_config`: method, sampler, rl / offline, value."""
  if "method" not in config:
    raise _err("method", "an RL config needs a method section")
  method, method_cfg = _method(config)
  if "sampler" not in config:
    raise _err("sampler", "an RL config needs a rollout sampler section")
  sampler = _sampler(config.sampler, "sampler", parts["model_config"], parts["family"])
  parts.update(method=method, method_cfg=method_cfg, sampler=sampler)
  parts.update(
      _offline(config) if method.offline else _online(config, method, method_cfg, sampler[1])
  )
  run_cfg = cls(**parts)
  method.check(method_cfg, run_cfg, sampler[1], run_cfg.model_config)
  return run_cfg


def validate_config(config, kind: Optional[str] = None) -> RunConfig:
  """Raises ``ValueError("config.<key>: ...")`` on the first problem; loads nothing.

  ``kind``: ``"rl"`` (online or offline, by the method's ``offline`` flag), ``"sft"``
  (scripts/sft.py: model, task, data, sft, optional eval) or None = ``"rl"`` when the config
  has a method section, else ``"sft"``. Returns the typed :class:`RunConfig`."""
  return RunConfig.from_config(config, kind)


__all__ = [
    "CheckpointSection",
    "DataSection",
    "EvalSection",
    "MeshSection",
    "ModelSection",
    "OfflineConfig",
    "RLConfig",
    "RunConfig",
    "SFTSection",
    "TaskSection",
    "ValueSection",
    "mesh_shape",
    "offline_config",
    "schema",
    "section_to",
    "validate_config",
]
