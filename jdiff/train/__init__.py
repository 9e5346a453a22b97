"""Training machinery: optimizers and the shared jitted, sharded update step."""

from jdiff.train.optim import make_optimizer, make_schedule
from jdiff.train.update import TrainState, UpdateStep, init_train_state, make_update_step

__all__ = [
    "TrainState",
    "UpdateStep",
    "init_train_state",
    "make_optimizer",
    "make_schedule",
    "make_update_step",
]
