"""A model being trained, as one value: :class:`Runtime`.

It holds what the loops used to keep in local variables and closures: the graphdef and the
trainable state, the frozen reference params (methods with a KL / DPO term), the jitted update
and scoring functions, the mesh and layouts. The loops thread it through their steps and get a
new one back (``dataclasses.replace``), so no function reads state rebound after it was made.
The policy and the TraceRL value model are both a ``Runtime`` (the value model has no
reference params and no sampling view).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jdiff.models.lora import has_lora, trainable_filter
from jdiff.rl.method import score_all
from jdiff.sharding import shard_state, use_rules
from jdiff.sharding.rules import TRAIN_RULES
from jdiff.train import distributed as dist
from jdiff.train.update import (
    TrainState,
    batch_shardings,
    init_train_state,
    make_update_step,
    tree_shardings,
)


@dataclasses.dataclass(frozen=True)
class Runtime:
  """One trained model: state, jitted functions and placement.

  ``update(state, batch) -> (state, metrics)`` is the shared update step;
  ``score(params, rest, batch)`` the model's no-grad scoring (log-probs, values)."""

  graphdef: Any
  state: TrainState
  update: Callable[..., Any]
  score: Callable[..., Any]
  mesh: Mesh
  fresh_opt_state: Callable[[Any], Any]
  ref_params: Any = None  # a frozen copy of the starting params, when the method needs one
  sample_rules: Any = None  # the sampling layout's rules (the policy only)
  # Scoring runs in this many consecutive row chunks (the update's grad_accum), so a scoring
  # forward holds one micro-batch's activations, not the whole step's.
  score_chunks: int = 1

  @classmethod
  def build(
      cls,
      model,
      optimizer,
      loss_fn,
      score_fn,
      *,
      mesh: Mesh,
      grad_accum: int,
      sample_rules=None,
      with_ref: bool = False,
      trainable: Any = nnx.Param,
  ) -> "Runtime":
    """``loss_fn(model, batch)`` and ``score_fn(model, batch)`` over the model ``model``;
    ``trainable`` (an nnx filter) picks the params that train (see ``init_train_state``)."""
    graphdef, state = init_train_state(
        model, optimizer, mesh=mesh, rules=TRAIN_RULES, trainable=trainable
    )
    update = make_update_step(
        graphdef, optimizer, loss_fn, mesh=mesh, rules=TRAIN_RULES, grad_accum=grad_accum
    )
    score = jax.jit(lambda params, rest, batch: score_fn(nnx.merge(graphdef, params, rest), batch))
    # A re-created optimizer state laid out as the update step's in_shardings expect.
    fresh = jax.jit(
        optimizer.init,
        out_shardings=tree_shardings(
            jax.eval_shape(optimizer.init, state.params), mesh, TRAIN_RULES
        ),
    )
    ref = reference_params(model, state.params) if with_ref else None
    return cls(
        graphdef=graphdef,
        state=state,
        update=update,
        score=score,
        mesh=mesh,
        fresh_opt_state=fresh,
        ref_params=ref,
        sample_rules=sample_rules,
        score_chunks=int(grad_accum),
    )

  def replace(self, **changes) -> "Runtime":
    return dataclasses.replace(self, **changes)

  def put(self, batch):
    """A host batch (the same on every process) as global arrays laid out as the update step
    takes them; jit rejects host arrays that would span other processes' devices."""
    return dist.to_global(batch, batch_shardings(batch, self.mesh, TRAIN_RULES))

  def on_mesh(self, fn, *args):
    """``fn(*args)`` traced with the mesh and training layout active (activation constraints)."""
    with jax.set_mesh(self.mesh), use_rules(TRAIN_RULES):
      return fn(*args)

  def scores(self, batch, params=None):
    """``score`` of ``batch`` (per iteration for stacked batches) with ``params`` (default: the
    current ones), on the host."""
    params = self.state.params if params is None else params
    fn = lambda b: self.on_mesh(self.score, params, self.state.rest, self.put(b))  # noqa: E731
    return score_chunks(lambda b: dist.to_host(score_all(fn, b)), batch, self.score_chunks)

  def step(self, batch):
    """One update on ``batch``: (new runtime, host metrics)."""
    state, metrics = self.update(self.state, self.put(batch))
    return self.replace(state=state), dist.to_host(metrics)

  def reset_optimizer(self) -> "Runtime":
    return self.replace(state=self.state.replace(opt_state=self.fresh_opt_state(self.state.params)))

  def sampling_model(self):
    """The model for sampling: weights in ``config.mesh.sampling_layout`` (the same arrays,
    not copies, when it agrees with the training layout, e.g. without an fsdp axis)."""
    rules = self.sample_rules
    return nnx.merge(
        self.graphdef,
        shard_state(self.state.params, self.mesh, rules),
        shard_state(self.state.rest, self.mesh, rules),
    )

  def items(self, name: str) -> dict:
    """What a checkpoint stores: ``{name: state}`` (and ``reference`` when held)."""
    out = {name: self.state}
    if self.ref_params is not None:
      out["reference"] = self.ref_params
    return out

  def restored(self, items: dict, name: str) -> "Runtime":
    """This runtime with the state (and reference) of a restored checkpoint's ``items``."""
    return self.replace(state=items[name], ref_params=items.get("reference", self.ref_params))


def reference_params(model, params):
  """The frozen reference policy's ``params`` (scored with the policy's ``rest``).

  Full fine-tuning: a copy of the starting params. A LoRA model (only its adapters are
  ``params``): the adapter disabled, i.e. :func:`jdiff.models.lora.lora_reference`'s model.
  Zero adapters add exactly 0 to every target's output, so with the shared base weights in
  ``rest`` they score as the base model; only adapter-sized zeros are held, no base copy.
  """
  if has_lora(model):
    return jax.tree.map(jnp.zeros_like, params)
  return jax.tree.map(jnp.copy, params)


def score_chunks(score, batch: dict, chunks: int):
  """``score(batch)`` over ``chunks`` consecutive row chunks, concatenated (host arrays).
  One chunk when the rows do not divide (every leaf with a leading dim holds the rows)."""
  rows = {np.shape(v)[0] for v in batch.values() if np.ndim(v)}
  n = rows.pop() if len(rows) == 1 else 0
  if chunks <= 1 or not n or n % chunks:
    return score(batch)
  size = n // chunks
  parts = [
      score({k: (v[i : i + size] if np.ndim(v) else v) for k, v in batch.items()})
      for i in range(0, n, size)
  ]
  return np.concatenate([np.asarray(p) for p in parts], axis=0)


def policy_runtime(
    model,
    optimizer,
    method,
    method_cfg,
    *,
    mesh: Mesh,
    grad_accum: int,
    sample_rules,
    with_ref: Optional[bool] = None,
) -> Runtime:
  """The policy's runtime for ``method`` (its loss and log-prob functions). A LoRA model
  trains (and weight-decays) its adapters only; its reference is the adapter disabled."""
  with_ref = method.needs_ref(method_cfg) if with_ref is None else with_ref
  return Runtime.build(
      model,
      optimizer,
      functools.partial(method.loss_fn, cfg=method_cfg),
      lambda m, b: method.logprob_fn(m, b, method_cfg),
      mesh=mesh,
      grad_accum=grad_accum,
      sample_rules=sample_rules,
      with_ref=with_ref,
      trainable=trainable_filter(model),
  )


def value_runtime(
    policy_model, optimizer, vcfg, model_config, *, mesh: Mesh, grad_accum: int
) -> Runtime:
  """TraceRL's value model (built from the policy), its clipped loss and value scores."""
  from jdiff.models.transformer import ValueModel
  from jdiff.rl import value as value_lib
  from jdiff.rl.tracerl import attention_mask

  mc = model_config
  loss = lambda m, b: value_lib.value_loss_fn(m, b, vcfg, attention_mask(b, mc))  # noqa: E731
  score = lambda m, b: value_lib.value_fn(m, b, attention_mask(b, mc))  # noqa: E731
  return Runtime.build(
      ValueModel.from_policy(policy_model), optimizer, loss, score, mesh=mesh, grad_accum=grad_accum
  )
