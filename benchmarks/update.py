#!/usr/bin/env python
"""RL update cost: throughput of the TraceRL update step, and rows / forward tokens per
response of TraceRL, CJ-GRPO and d1 (diffu-GRPO), side by side in one run.

Table 1 times the jitted TraceRL update (``jdiff.train.update.make_update_step`` with the
project's optimizer: grad-norm clip + AdamW) on real block-sampler trajectories of SDAR
models at the tiny and the small (~30M parameter) preset: one warm-up call (compile), then
the median of ``--repeats`` calls. Achieved GFLOP/s counts ``6 · N_params`` FLOPs per token
processed (forward + backward; every row position counts, padding included) and is also
given as a percentage of the measured float32 jax matmul peak.

Table 2 counts, from the batches each method actually builds out of one rollout batch,
the training rows and forward tokens per response:
- TraceRL on SDAR (block sampler), shrink s = 1, 2, 4 (rows ``[prompt | clean | noisy]``);
- TraceRL on LLaDA (full attention, uniform-schedule trajectory), for comparison;
- CJ-GRPO on LLaDA, uniform steps (gen/2) vs ASS steps (log2 gen), ``record_states=True``;
- d1's diffu-GRPO: one ``[prompt' | masks]`` row per response for each of μ iterations.

Run: ``python benchmarks/update.py [--gen 64] [--batch 8] [--repeats 3]``; ``--quick`` is a
tiny-only smoke run (< 1 min).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import jdiff  # noqa: E402
from forward import SIZES, matmul_peak  # noqa: E402
from jdiff.rl import cj_grpo, diffu_grpo, tracerl  # noqa: E402
from jdiff.sampling import llada  # noqa: E402
from jdiff.sampling import block
from jdiff.sampling.block import BlockSamplerConfig  # noqa: E402
from jdiff.sampling.common import left_pad  # noqa: E402
from jdiff.train.optim import make_optimizer  # noqa: E402
from jdiff.train.update import init_train_state, make_update_step  # noqa: E402

BUCKET = 16  # prompts are left-padded to a multiple of this


def make_prompts(batch: int, seed: int = 0):
  """``batch`` prompts of 5..15 ordinary token ids (no special ids, which are all < 4)."""
  rng = np.random.RandomState(seed)
  return [rng.randint(4, 100, rng.randint(5, 16)).tolist() for _ in range(batch)]


def make_model(size: str, family: str):
  return jdiff.DiffusionLM(jdiff.preset(f"{size}_{family}"), rngs=nnx.Rngs(0))


def block_trajectory(model, prompts, gen: int, key):
  """SDAR block-sampler rollout: 1 token per step (steps_per_block = block size), no stop,
  so every response decodes all ``gen`` tokens."""
  cfg = BlockSamplerConfig(
      gen_length=gen, steps_per_block=model.config.block_size, temperature=1.0, stop_ids=()
  )
  return jax.device_get(block.sample(model, prompts, None, key, cfg, bucket=BUCKET))


def llada_trajectory(model, prompts, gen: int, schedule: str, key):
  """LLaDA rollout with recorded states: uniform (gen/2 steps, 2 tokens per step) or ASS
  (floor(log2 gen) steps of 1, 2, 4, ... tokens); blocks of gen/2 for both."""
  steps = gen // 2 if schedule == "uniform" else int(math.floor(math.log2(gen)))
  cfg = llada.LLaDASamplerConfig(
      gen_length=gen,
      block_length=gen // 2,
      steps=steps,
      schedule=schedule,
      temperature=1.0,
      record_states=True,
  )
  ids, mask, _ = left_pad(prompts, model.config.pad_token_id, bucket=BUCKET)
  return jax.device_get(llada.sample(model, ids, mask, key, cfg))


def advantages(n: int):
  return np.linspace(-1.0, 1.0, n).astype(np.float32)


# --------------------------------------------------------------------------- table 1
def time_update(model, batch, loss_fn, repeats: int):
  """(first-call seconds, median seconds) of the jitted update step on ``batch``."""
  opt = make_optimizer({"lr": 1e-6})
  graphdef, state = init_train_state(model, opt)
  update = make_update_step(graphdef, opt, loss_fn)
  batch = jax.device_put(batch)
  t0 = time.perf_counter()
  state, metrics = update(state, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  if float(metrics["skipped"]):
    raise RuntimeError("the update step skipped (non-finite loss or gradient)")
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, metrics = update(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def tracerl_batch(model, traj, shrink: int):
  cfg = tracerl.TraceRLConfig(shrink=shrink)
  batch = tracerl.build_batch(traj, advantages(np.shape(traj.tokens)[0]), None, cfg, model.config)
  batch["old_logp"] = np.asarray(jax.jit(lambda b: tracerl.logprob_fn(model, b, cfg))(batch))
  return batch, cfg


def bench_tracerl(size, prompts, gen, shrinks, repeats, peak):
  model = make_model(size, "sdar")
  n_params = model.config.num_params()
  traj = block_trajectory(model, prompts, gen, jax.random.key(0))
  out = []
  for s in shrinks:
    batch, cfg = tracerl_batch(model, traj, s)
    rows, width = batch["input_ids"].shape
    first, t = time_update(model, batch, functools.partial(tracerl.loss_fn, cfg=cfg), repeats)
    tokens = rows * width
    gflops = 6 * n_params * tokens / t / 1e9
    out.append(
        dict(
            size=size,
            params=n_params,
            shrink=s,
            rows=rows,
            width=width,
            tokens=tokens,
            first=first,
            t=t,
            rows_s=rows / t,
            tok_s=tokens / t,
            gflops=gflops,
            peak_pct=100 * gflops / peak,
        )
    )
  return out, model, traj


def print_table1(results, peak, gen, batch):
  print(
      f"\nTable 1: TraceRL update step (SDAR, block sampler trajectories, {batch} responses "
      f"x gen {gen}; forward+backward+AdamW, float32)"
  )
  print(
      "GFLOP/s = 6 * N_params * tokens / time; tokens = rows x row length (padding "
      f"included); % of the jax matmul peak ({peak:.1f} GFLOP/s)"
  )
  hdr = (
      f"{'size':6} {'params':>8} {'s':>2} {'rows':>5} {'row len':>7} {'tokens':>7} "
      f"{'1st call s':>10} {'median s':>9} {'rows/s':>8} {'tokens/s':>9} {'GFLOP/s':>8} "
      f"{'% peak':>7}"
  )
  print(hdr)
  print("-" * len(hdr))
  for r in results:
    print(
        f"{r['size']:6} {r['params'] / 1e6:7.2f}M {r['shrink']:2d} {r['rows']:5d} "
        f"{r['width']:7d} {r['tokens']:7d} {r['first']:10.2f} {r['t']:9.3f} "
        f"{r['rows_s']:8.1f} {r['tok_s']:9.0f} {r['gflops']:8.1f} {r['peak_pct']:6.1f}%"
    )


# --------------------------------------------------------------------------- table 2
def count_rows(batch, n_resp: int, supervised, iterations: int = 1):
  """Per-response counts of a built batch. ``supervised`` ``[R, ...]``: the positions each
  row trains on. ``iterations``: distinct variants of every row (d1's μ prompt-mask draws,
  one per update); TraceRL and CJ-GRPO build their rows once."""
  rows, width = np.shape(batch["input_ids"])
  sup = np.asarray(supervised).reshape(rows, -1)
  per_update = rows / n_resp
  return dict(
      rows=iterations * per_update,
      width=width,
      nonempty=iterations * float((sup.sum(1) > 0).sum()) / n_resp,
      sup=iterations * float(sup.sum()) / n_resp,
      fwd=iterations * per_update * width,
      fwd_update=per_update * width,
  )


def rows_table(sdar, sdar_traj, llada_model, llada_trajs, gen, mu):
  n = np.shape(sdar_traj.tokens)[0]
  lines = []
  steps = lambda t: float(np.mean(t.num_steps))
  for s in (1, 2, 4):
    cfg = tracerl.TraceRLConfig(shrink=s)
    b = tracerl.build_batch(sdar_traj, advantages(n), None, cfg, sdar.config)
    lines.append(
        ("TraceRL (SDAR, block)", f"s={s}", steps(sdar_traj), count_rows(b, n, b["loss_mask"]))
    )
  uni = llada_trajs["uniform"]
  for s in (1, 2, 4, 8):
    cfg = tracerl.TraceRLConfig(shrink=s)
    b = tracerl.build_batch(uni, advantages(n), None, cfg, llada_model.config)
    lines.append(
        ("TraceRL (LLaDA, full)", f"uniform, s={s}", steps(uni), count_rows(b, n, b["loss_mask"]))
    )
  for name, traj in llada_trajs.items():
    b = cj_grpo.build_batch(traj, advantages(n), None, cj_grpo.CJGRPOConfig(), llada_model.config)
    lines.append(("CJ-GRPO (LLaDA)", name, steps(traj), count_rows(b, n, b["loss_mask"])))
  d1_cfg = diffu_grpo.DiffuGRPOConfig(num_iterations=mu)
  b = diffu_grpo.build_batch(uni, advantages(n), jax.random.key(0), d1_cfg, llada_model.config)
  assert b["iteration_input_ids"].shape[:2] == (n, mu)
  # One row per response per inner iteration (a fresh prompt-mask draw each), one per update.
  lines.append(
      (
          "d1 diffu-GRPO (LLaDA)",
          f"uniform, mu={mu}",
          steps(uni),
          count_rows(b, n, b["loss_mask"], iterations=mu),
      )
  )
  return lines


def print_table2(lines, gen, n, prompt_len):
  print(
      f"\nTable 2: training rows and forward tokens per response ({n} responses, gen {gen}, "
      f"prompts left-padded to {prompt_len}; from the batches each method builds)"
  )
  hdr = (
      f"{'method':22} {'setting':17} {'steps':>5} {'rows/resp':>9} {'non-empty':>9} "
      f"{'tok/row':>7} {'fwd tok/resp':>12} {'per update':>10} {'sup tok/resp':>12}"
  )
  print(hdr)
  print("-" * len(hdr))
  for method, setting, steps, c in lines:
    print(
        f"{method:22} {setting:17} {steps:5.1f} {c['rows']:9.0f} {c['nonempty']:9.2f} "
        f"{c['width']:7d} {c['fwd']:12.0f} {c['fwd_update']:10.0f} {c['sup']:12.1f}"
    )
  print(
      "steps: decoding steps per response. rows/resp: rows built per response (TraceRL: "
      "ceil(B/s) block model, ceil(steps/s) full attention;\nCJ-GRPO: one per recorded step; "
      "d1: one per inner iteration). non-empty: rows with a supervised position. fwd tok/resp "
      "= rows/resp x tok/row;\nper update: forward tokens per response of one update call "
      "(TraceRL and CJ-GRPO repeat all their rows at each of their\ninner updates, d1 "
      "uses one iteration's row per update). sup tok/resp: supervised positions per response "
      "(over all rows)."
  )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8, help="responses per rollout batch")
  p.add_argument("--gen", type=int, default=64, help="completion length")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--shrinks", default="1,4", help="TraceRL shrink values to time")
  p.add_argument("--mu", type=int, default=12, help="d1 inner iterations (GSM8K default)")
  p.add_argument("--quick", action="store_true", help="tiny only, s=1: a < 1 min smoke run")
  args = p.parse_args()
  if args.gen % 2 or args.gen < 4:
    p.error("--gen must be even and >= 4")
  sizes = ["tiny"] if args.quick else list(SIZES)
  shrinks = [1] if args.quick else [int(s) for s in args.shrinks.split(",")]

  peak, _ = matmul_peak(repeats=3)
  print(f"devices: {jax.devices()}")
  print(f"float32 jax matmul peak (2048^3): {peak:.1f} GFLOP/s")
  prompts = make_prompts(args.batch)
  prompt_len = -(-max(map(len, prompts)) // BUCKET) * BUCKET

  results, tiny = [], None
  for size in sizes:
    if size != "tiny":  # the benchmark sizes are the presets of the same name
      pc = jdiff.preset(f"{size}_sdar")
      assert (pc.hidden_size, pc.num_layers) == (
          SIZES[size]["hidden_size"],
          SIZES[size]["num_hidden_layers"],
      )
    out, model, traj = bench_tracerl(size, prompts, args.gen, shrinks, args.repeats, peak)
    results += out
    if size == "tiny":
      tiny = (model, traj)
  print_table1(results, peak, args.gen, args.batch)

  sdar, sdar_traj = tiny
  llada_model = make_model("tiny", "llada")
  llada_trajs = {
      sched: llada_trajectory(llada_model, prompts, args.gen, sched, jax.random.key(1))
      for sched in ("uniform", "ass")
  }
  lines = rows_table(sdar, sdar_traj, llada_model, llada_trajs, args.gen, args.mu)
  print_table2(lines, args.gen, args.batch, prompt_len)


if __name__ == "__main__":
  main()
