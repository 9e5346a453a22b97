#!/usr/bin/env python
"""Training curves: python scripts/plot.py --workdir DIR [--out DIR/plots]

Reads ``DIR/metrics.jsonl`` (written by scripts/train.py and scripts/sft.py: one JSON object
per step with ``step``) and writes PNGs with matplotlib's Agg backend (no display needed):
one ``<metric>.png`` per metric present — reward_mean, accuracy, eval_accuracy, loss, kl,
clip_frac, response_length, and rollout_s / train_s together in ``timing.png`` — plus
``summary.png``, a grid of all of them. Metrics absent from the file (or never finite) are
skipped. A step logged twice (a resumed run) keeps its last value.
"""

import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402

# (file stem, title, metric keys drawn on one set of axes)
PANELS = (
    ("reward_mean", "reward (mean)", ("reward_mean",)),
    ("accuracy", "train accuracy", ("accuracy",)),
    ("eval_accuracy", "eval accuracy", ("eval_accuracy",)),
    ("loss", "loss", ("loss",)),
    ("kl", "KL", ("kl",)),
    ("clip_frac", "clip fraction", ("clip_frac",)),
    ("response_length", "response length (tokens)", ("response_length",)),
    ("timing", "seconds per step", ("rollout_s", "train_s")),
)


def _define_flags():
  flags.DEFINE_string("workdir", None, "a run directory holding metrics.jsonl")
  flags.DEFINE_string("out", None, "output directory for the PNGs (default: WORKDIR/plots)")


def read_metrics(path):
  """``{metric: ([steps], [values])}`` of the finite numeric values, by step."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"no metrics file at {path} (scripts/train.py and scripts/sft.py "
        "write DIR/metrics.jsonl)"
    )
  from jdiff.data.loading import jsonl_objects

  by_step = {}
  for n, row in jsonl_objects(path):
    if "step" not in row:
      raise ValueError(f"{path} line {n}: expected a JSON object with a 'step'")
    by_step.setdefault(int(row["step"]), {}).update(row)
  series = {}
  for step in sorted(by_step):
    for k, v in by_step[step].items():
      if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
        continue
      if math.isfinite(v):
        xs, ys = series.setdefault(k, ([], []))
        xs.append(step)
        ys.append(float(v))
  return series


def plot(workdir, out=None, log=print):
  """Writes the PNGs for ``workdir``; returns their paths (``summary.png`` last)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  series = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  panels = [(stem, title, [k for k in keys if k in series]) for stem, title, keys in PANELS]
  panels = [p for p in panels if p[2]]
  if not panels:
    raise ValueError(
        f"{workdir}/metrics.jsonl has none of the plotted metrics "
        f"{[k for _, _, keys in PANELS for k in keys]}; it has {sorted(series)}"
    )
  out = out or os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)

  def draw(ax, title, keys):
    for k in keys:
      xs, ys = series[k]
      ax.plot(xs, ys, marker="." if len(xs) < 50 else None, label=k)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if len(keys) > 1:
      ax.legend()

  paths = []
  for stem, title, keys in panels:
    fig, ax = plt.subplots(figsize=(6, 4))
    draw(ax, title, keys)
    fig.tight_layout()
    paths.append(os.path.join(out, f"{stem}.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
  cols = min(3, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
  for ax, (stem, title, keys) in zip(axes.flat, panels):
    draw(ax, title, keys)
  for ax in list(axes.flat)[len(panels) :]:
    ax.axis("off")
  fig.suptitle(os.path.basename(os.path.abspath(workdir)))
  fig.tight_layout()
  paths.append(os.path.join(out, "summary.png"))
  fig.savefig(paths[-1], dpi=100)
  plt.close(fig)
  skipped = [k for _, _, keys in PANELS for k in keys if k not in series]
  log(f"wrote {len(paths)} plots to {out}" + (f" (no data for {skipped})" if skipped else ""))
  return paths


def main(argv):
  del argv
  try:
    plot(flags.FLAGS.workdir, flags.FLAGS.out)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"plot.py: error: {e}") from None


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("workdir")
  app.run(main)
