"""TraceRL with the diffusion value model (docs/methods.md §Diffusion value model) on the embedded default:
per-token advantages from trace-step GAE (gamma = lambda = 1), clipped value loss, the value
model trained every step with its own optimizer (lr 5e-6 in the TraDo-4B recipe; larger here
for the small model).

  python scripts/train.py --config configs/tracerl_value.py
"""

from jdiff.config_loading import load_sibling

tracerl = load_sibling(__file__, "tracerl")


def get_config():
  c = tracerl.get_config()
  c.value.enabled = True
  c.value.optim = dict(lr=1e-3, max_grad_norm=1.0)
  return c
