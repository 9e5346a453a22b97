"""The one update step every method shares: jit, sharded by the rules table, state donated.

``update(state, batch) -> (state, metrics)`` (docs/design.md):
- the model's ``graphdef`` is closed over; ``nnx.merge(graphdef, params, rest)`` happens
  inside the jitted function, so ``loss_fn(model, batch) -> (loss, metrics)`` is written
  against a normal module;
- ``in_shardings`` / ``out_shardings`` come from the parameters' ``logical_axes`` through
  :func:`jdiff.sharding.state_shardings` on ``jax.eval_shape`` of the state; batch leaves are
  sharded on their leading dim by the ``"batch"`` rule (``('data', 'fsdp')``);
- gradient accumulation: the batch's leading dim is split into ``grad_accum`` micro-batches
  and a ``lax.scan`` averages their losses, metrics and gradients; a batch that carries the
  optimizer step's weights (``row_weight``, see :func:`jdiff.rl.losses.step_weights`) has
  losses that are weighted sums over the whole step, so its micro-batch losses, gradients and
  ``*loss`` / ``num_tokens`` metrics are added instead (grad_accum then changes memory only);
- a non-finite loss or gradient norm skips the update (params and optimizer state are kept,
  ``metrics['skipped'] = 1``); ``state.step`` counts update *calls*, skipped or not, while the
  optimizer's own count (which drives the LR schedule) only advances on applied updates.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jdiff.sharding import logical_spec, state_shardings, use_rules
from jdiff.sharding.rules import active_rules

F32 = jnp.float32
# A batch holding this key is step-weighted (module docstring): micro-batch losses are summed.
STEP_WEIGHT_KEY = "row_weight"


def _summed_metric(name: str) -> bool:
  return name.endswith("loss") or name == "num_tokens"


LossFn = Callable[[nnx.Module, Any], Tuple[jax.Array, Mapping[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
  """Trainable state of one model; its ``graphdef`` is kept outside (closed over by jit)."""

  params: nnx.State  # the trainable variables (init_train_state: every nnx.Param by default)
  opt_state: Any  # optax state for ``params``
  step: jax.Array  # int32 scalar: update calls so far (skipped ones included)
  rest: nnx.State  # any non-Param variables, carried through unchanged


def _variable_sharding(var: nnx.Variable, mesh: Mesh, rules) -> nnx.Variable:
  return state_shardings(nnx.State({"v": var}), mesh, rules)["v"]


def tree_shardings(tree: Any, mesh: Mesh, rules=None) -> Any:
  """Shardings for a pytree holding nnx Variables (by their ``logical_axes``) and arrays
  (replicated), e.g. a whole :class:`TrainState` or an optax state."""
  rules = active_rules() if rules is None else rules
  replicated = NamedSharding(mesh, P())

  def one(x):
    if isinstance(x, nnx.Variable):
      return _variable_sharding(x, mesh, rules)
    return replicated

  return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_shardings(batch: Any, mesh: Mesh, rules=None) -> Any:
  """Every batch leaf sharded on its leading dim by the ``"batch"`` rule (replicated when
  that dim does not divide the mesh axes, and for scalars)."""
  rules = active_rules() if rules is None else rules
  mesh_shape = dict(mesh.shape)

  def one(x):
    shape = np.shape(x)
    if not shape:
      return NamedSharding(mesh, P())
    names = ("batch",) + (None,) * (len(shape) - 1)
    return NamedSharding(mesh, logical_spec(names, shape, mesh_shape, rules))

  return jax.tree.map(one, batch)


def init_train_state(
    model: nnx.Module,
    optimizer: optax.GradientTransformation,
    mesh: Optional[Mesh] = None,
    rules=None,
    trainable: Any = nnx.Param,
):
  """Splits ``model`` into ``(graphdef, TrainState)``.

  ``trainable`` (an nnx filter, default every ``nnx.Param``) picks ``state.params``: only
  they get gradients, optimizer state and weight decay; everything else rides in
  ``state.rest`` unchanged (e.g. ``jdiff.models.lora.LoraParam`` trains only the adapters).

  The state owns fresh copies of the model's arrays (the update step donates it, which must
  not invalidate ``model``). With a mesh, params and optimizer state are created directly
  with the rules table's shardings.
  """
  graphdef, params, rest = nnx.split(model, trainable, ...)

  def make(params, rest):
    params, rest = jax.tree.map(jnp.copy, (params, rest))
    return TrainState(
        params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32), rest=rest
    )

  if mesh is None:
    return graphdef, jax.jit(make)(params, rest)
  shardings = tree_shardings(jax.eval_shape(make, params, rest), mesh, rules)
  params = jax.device_put(params, shardings.params)
  rest = jax.device_put(rest, shardings.rest)
  return graphdef, jax.jit(make, out_shardings=shardings)(params, rest)


def _split_micro(x, n: int):
  """``[n*m, ...]`` -> ``[n, m, ...]`` with micro-batch i = rows i, i+n, i+2n, ...

  Strided, so a batch sharded contiguously on its leading dim stays evenly sharded in every
  micro-batch (no resharding) when ``m`` divides by the shard count.
  """
  x = jnp.asarray(x)
  if x.ndim == 0:
    return jnp.broadcast_to(x, (n,))
  if x.shape[0] % n:
    raise ValueError(f"grad_accum={n} does not divide the batch leading dim {x.shape[0]}")
  m = x.shape[0] // n
  return jnp.swapaxes(x.reshape((m, n) + x.shape[1:]), 0, 1)


class UpdateStep:
  """``update(state, batch) -> (state, metrics)``; one ``jax.jit`` per batch shape/structure.

  ``jitted(state, batch)`` returns the underlying jitted function (for ``.lower`` /
  compile checks); ``lower(state, batch)`` lowers it.
  """

  def __init__(
      self,
      graphdef,
      optimizer,
      loss_fn: LossFn,
      *,
      mesh: Optional[Mesh] = None,
      rules=None,
      grad_accum: int = 1,
      donate: bool = True,
  ):
    if int(grad_accum) < 1:
      raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
    self.graphdef, self.optimizer, self.loss_fn = graphdef, optimizer, loss_fn
    self.mesh, self.rules, self.grad_accum, self.donate = mesh, rules, int(grad_accum), donate
    self._cache = {}

  # -- the traced computation -------------------------------------------------------------
  def _loss_and_grads(self, params, rest, batch):
    def f(p):
      model = nnx.merge(self.graphdef, p, rest)
      loss, metrics = self.loss_fn(model, batch)
      metrics = {k: jnp.asarray(v, F32) for k, v in dict(metrics).items()}
      return jnp.asarray(loss, F32), metrics

    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, metrics, grads

  def _update(self, state: TrainState, batch):
    n = self.grad_accum
    if n == 1:
      loss, metrics, grads = self._loss_and_grads(state.params, state.rest, batch)
    else:
      micro = jax.tree.map(lambda x: _split_micro(x, n), batch)
      first = jax.tree.map(lambda x: x[0], micro)
      shapes = jax.eval_shape(self._loss_and_grads, state.params, state.rest, first)
      zeros = jax.tree.map(
          lambda s: jnp.zeros(s.shape, F32 if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype),
          shapes,
      )

      def body(acc, mb):
        out = self._loss_and_grads(state.params, state.rest, mb)
        return jax.tree.map(jnp.add, acc, out), None

      (loss, metrics, grads), _ = jax.lax.scan(body, zeros, micro)
      if isinstance(batch, Mapping) and STEP_WEIGHT_KEY in batch:
        metrics = {k: v if _summed_metric(k) else v / n for k, v in metrics.items()}
      else:
        loss, metrics, grads = jax.tree.map(lambda x: x / n, (loss, metrics, grads))
      grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = self.optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    new_state = state.replace(
        params=keep(new_params, state.params),
        opt_state=keep(new_opt, state.opt_state),
        step=state.step + 1,
    )
    metrics = dict(metrics)
    metrics.update(loss=loss, grad_norm=grad_norm, skipped=1.0 - ok.astype(F32))
    return new_state, metrics

  # -- jit / sharding ---------------------------------------------------------------------
  def _context(self):
    stack = contextlib.ExitStack()
    if self.mesh is not None:
      stack.enter_context(jax.set_mesh(self.mesh))
    if self.rules is not None:
      stack.enter_context(use_rules(self.rules))
    return stack

  def jitted(self, state: TrainState, batch):
    key = (
        jax.tree.structure(state),
        jax.tree.structure(batch),
        tuple((np.shape(x), str(jnp.result_type(x))) for x in jax.tree.leaves(batch)),
    )
    fn = self._cache.get(key)
    if fn is None:
      donate = (0,) if self.donate else ()
      if self.mesh is None:
        fn = jax.jit(self._update, donate_argnums=donate)
      else:
        state_sh = tree_shardings(jax.eval_shape(lambda s: s, state), self.mesh, self.rules)
        batch_sh = batch_shardings(batch, self.mesh, self.rules)
        fn = jax.jit(
            self._update,
            in_shardings=(state_sh, batch_sh),
            out_shardings=(state_sh, NamedSharding(self.mesh, P())),
            donate_argnums=donate,
        )
      self._cache[key] = fn
    return fn

  def lower(self, state: TrainState, batch):
    with self._context():
      return self.jitted(state, batch).lower(state, batch)

  def __call__(self, state: TrainState, batch):
    fn = self.jitted(state, batch)
    with self._context():
      return fn(state, batch)


def make_update_step(
    graphdef,
    optimizer: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    mesh: Optional[Mesh] = None,
    rules=None,
    grad_accum: int = 1,
    donate: bool = True,
) -> UpdateStep:
  """Builds the jitted, sharded, donating ``update(state, batch) -> (state, metrics)``.

  ``loss_fn(model, batch) -> (scalar loss, {name: scalar})`` must be pure (changes it makes
  to non-Param variables are dropped). Metrics are averaged over micro-batches; ``loss``,
  ``grad_norm`` (before clipping) and ``skipped`` are added.
  """
  return UpdateStep(
      graphdef, optimizer, loss_fn, mesh=mesh, rules=rules, grad_accum=grad_accum, donate=donate
  )


__all__ = [
    "TrainState",
    "UpdateStep",
    "batch_shardings",
    "init_train_state",
    "make_update_step",
    "tree_shardings",
]
