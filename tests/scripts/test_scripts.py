"""scripts/sample.py, eval.py, plot.py, sft.py and the configs/sft_*.py configs.

The scripts' functions are called in-process (one JAX start for the whole file); the
command-line error paths, which exit before anything heavy is imported, run as subprocesses.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SFT_CONFIGS = ("sft_block", "sft_llada", "sft_semi_ar")


def _load(kind, name):
  path = os.path.join(ROOT, kind, f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_jdiff_{kind}_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def scripts():
  return {n: _load("scripts", n) for n in ("sample", "eval", "plot", "sft")}


@pytest.fixture(scope="module")
def sdar_dir(tmp_path_factory):
  """A tiny random HF SDAR checkpoint whose special ids agree with the char tokenizer's."""
  import hf_fixtures

  from jdiff.data.char_tokenizer import build_char_tokenizer, special_token_ids

  path = str(tmp_path_factory.mktemp("sdar_char"))
  hf_fixtures.make_sdar(path, vocab_size=128)
  tok = build_char_tokenizer()
  tok.save_pretrained(path)
  ids = special_token_ids(tok)
  with open(os.path.join(path, "config.json")) as f:
    cj = json.load(f)
  cj.update(mask_token_id=ids["mask"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(cj, f)
  return path


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


def _small_sft_config(name, **sft):
  cfg = _load("configs", name).get_config()
  cfg.tensorboard = False
  cfg.task.num_train, cfg.task.num_eval = 48, 6
  cfg.sft.update(dict(dict(steps=5, batch_size=8), **sft))
  cfg.eval.batch_size = 4
  return cfg


# ----------------------------------------------------------------------------- sample.py


def test_sample_writes_completions(scripts, sdar_dir, tmp_path):
  import jdiff
  from jdiff.data.loading import apply_template

  sample = scripts["sample"]
  prompts = _write_jsonl(
      tmp_path / "in.jsonl",
      [
          {"prompt": "Compute 1+2"},
          "",
          {"prompt_ids": [5, 6, 7, 8, 9, 10, 11]},
          {"prompt": "hi", "extra": 1},
      ],
  )
  tracerl = _load("configs", "tracerl").get_config()
  sampler = dict(tracerl.sampler, gen_length=10, stop_ids=())  # no stop: every block decodes
  out = str(tmp_path / "out.jsonl")
  records = sample.sample_file(sdar_dir, prompts, out, sampler, batch_size=4, seed=3, num_samples=2)
  with open(out) as f:
    lines = [json.loads(line) for line in f]
  assert lines == records
  assert [(r["index"], r["sample"]) for r in lines] == [(i, s) for i in range(3) for s in range(2)]
  tok = jdiff.load_tokenizer(sdar_dir)
  assert lines[0]["prompt_ids"] == apply_template(tok, "Compute 1+2")
  assert lines[2]["prompt_ids"] == [5, 6, 7, 8, 9, 10, 11]
  assert lines[0]["prompt"] == "Compute 1+2" and "prompt" not in lines[2]
  block = jdiff.from_pretrained(sdar_dir).config.block_size
  for r in lines:
    n = len(r["completion_ids"])
    assert n == 10 and len(r["step_map"]) == n and len(r["logprobs"]) == n
    assert r["text"] == tok.decode(r["completion_ids"], skip_special_tokens=True)
    steps = np.array(r["step_map"])
    assert steps.min() == 1 and steps.max() == r["num_steps"]
    assert all(lp <= 0 for lp in r["logprobs"])
    # Blocks sit at absolute positions: every token of a block is decoded after every token
    # of the blocks before it (the step map is global across blocks).
    blocks = (len(r["prompt_ids"]) + np.arange(n)) // block
    for b in np.unique(blocks)[1:]:
      assert steps[blocks < b].max() < steps[blocks == b].min()
  # The two samples of a prompt are independent draws.
  assert lines[0]["completion_ids"] != lines[1]["completion_ids"]


def test_sample_default_sampler_and_stop(scripts, sdar_dir, tmp_path):
  sample = scripts["sample"]
  prompts = _write_jsonl(tmp_path / "in.jsonl", [{"prompt_ids": [5, 6, 7]}])
  # No config: the family's default sampler (block) with its defaults but a short budget.
  recs = sample.sample_file(
      sdar_dir, prompts, str(tmp_path / "o.jsonl"), {"gen_length": 8}, chat_template=False
  )
  (r,) = recs
  assert 1 <= len(r["completion_ids"]) <= 8
  if len(r["completion_ids"]) < 8:  # stopped: the stop token is the last one kept
    assert r["completion_ids"][-1] == 0


def test_sample_bad_inputs(scripts, sdar_dir, tmp_path):
  sample = scripts["sample"]
  good = _write_jsonl(tmp_path / "good.jsonl", [{"prompt": "x"}])
  missing = str(tmp_path / "no_such_model")
  with pytest.raises(sample.InputError, match="no_such_model"):
    sample.sample_file(missing, good, str(tmp_path / "o.jsonl"))
  bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}, {"text": "y"}])
  with pytest.raises(sample.InputError, match=r"line 2: has neither 'prompt' nor 'prompt_ids'"):
    sample.sample_file(sdar_dir, bad, str(tmp_path / "o.jsonl"))
  with pytest.raises(sample.InputError, match="line 1: not valid JSON"):
    sample.sample_file(
        sdar_dir, _write_jsonl(tmp_path / "j.jsonl", ["{oops"]), str(tmp_path / "o.jsonl")
    )
  with pytest.raises(sample.InputError, match="line 1: token id 999"):
    sample.sample_file(
        sdar_dir,
        _write_jsonl(tmp_path / "v.jsonl", [{"prompt_ids": [5, 999]}]),
        str(tmp_path / "o.jsonl"),
    )
  # The command line: a clear message naming the path and a non-zero exit code.
  cmd = [
      sys.executable,
      os.path.join(ROOT, "scripts", "sample.py"),
      "--prompts",
      good,
      "--out",
      str(tmp_path / "o.jsonl"),
  ]
  res = subprocess.run(cmd + ["--model", missing], capture_output=True, text=True, timeout=120)
  assert res.returncode != 0 and missing in res.stderr and "Traceback" not in res.stderr
  res = subprocess.run(
      cmd[:2] + ["--model", sdar_dir, "--prompts", bad, "--out", "o.jsonl"],
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert res.returncode != 0 and "line 2" in res.stderr and "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- plot.py


def test_plot(scripts, tmp_path):
  plot = scripts["plot"]
  rows = [
      {
          "step": s,
          "reward_mean": 0.1 * s,
          "loss": 1.0 / s,
          "rollout_s": 2.0,
          "train_s": 1.0,
          "response_length": 10 + s,
      }
      for s in range(1, 6)
  ]
  rows[2]["loss"] = "nan"  # how MetricsWriter stores non-finite values
  rows[4]["eval_accuracy"] = 0.5
  _write_jsonl(tmp_path / "metrics.jsonl", rows)
  paths = plot.plot(str(tmp_path))
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(
      [
          "reward_mean.png",
          "loss.png",
          "eval_accuracy.png",
          "timing.png",
          "response_length.png",
          "summary.png",
      ]
  )
  for p in paths:
    with open(p, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    plot.plot(str(tmp_path / "empty"))
  res = subprocess.run(
      [
          sys.executable,
          os.path.join(ROOT, "scripts", "plot.py"),
          "--workdir",
          str(tmp_path / "empty"),
      ],
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert res.returncode != 0 and "metrics.jsonl" in res.stderr


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", SFT_CONFIGS)
def test_sft_configs_load(scripts, name):
  from jdiff import sft as sft_lib
  from jdiff.models.config import PRESETS
  from jdiff.sampling import registry

  cfg = _load("configs", name).get_config()
  assert cfg.model.preset in PRESETS and cfg.seed == 0
  sft_lib.get(cfg.sft.objective)
  family = PRESETS[cfg.model.preset]().family
  for mode in ("static", "dynamic"):
    sname, settings = scripts["eval"].mode_sampler(cfg.eval.sampler, family, mode, 0.9)
    registry.make_config(sname, settings)


# ----------------------------------------------------------------------------- sft.py + eval.py


def test_sft_then_eval(scripts, tmp_path, capsys):
  import jdiff

  sft, ev = scripts["sft"], scripts["eval"]
  cfg = _small_sft_config("sft_block")
  cfg.eval.sampler.gen_length = 8
  workdir = str(tmp_path / "sft")
  res = sft.run(cfg, workdir, log=lambda *_: None)
  assert np.isfinite(res["loss_before"]) and np.isfinite(res["loss_after"])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [1, 2, 3, 4, 5]
  model_dir = os.path.join(workdir, "model")
  model = jdiff.from_pretrained(model_dir)
  assert model.config.family == "sdar" and model.config.mask_token_id == 1
  jdiff.load_tokenizer(model_dir)
  assert "before" in capsys.readouterr().out

  out = str(tmp_path / "eval.json")
  results = ev.run(cfg, model_dir=model_dir, mode="both", out=out, log=lambda *_: None)
  printed = capsys.readouterr().out
  assert "eval static: accuracy" in printed and "eval dynamic: accuracy" in printed
  with open(out) as f:
    saved = json.load(f)
  assert saved["num_prompts"] == 6 and saved["modes"]["dynamic"]["settings"]["threshold"] == 0.9
  for m in ("static", "dynamic"):
    assert 0.0 <= saved[f"accuracy_{m}"] <= 1.0
    assert results[f"accuracy_{m}"] == saved[f"accuracy_{m}"]
  # An SFT workdir (no RL checkpoints) evaluates its model/.
  again = ev.run(cfg, workdir=workdir, log=lambda *_: None)
  assert again["accuracy_static"] == saved["accuracy_static"]
  assert os.path.exists(os.path.join(workdir, "eval.json"))
  with pytest.raises(ev.InputError, match="no_such_dir"):
    ev.run(cfg, model_dir=str(tmp_path / "no_such_dir"))


def test_eval_restores_rl_checkpoint(scripts, tmp_path):
  """--workdir: the latest RL checkpoint's policy (TrainState under item 'policy')."""
  import jax
  from flax import nnx

  from jdiff.train import setup
  from jdiff.train.checkpointing import Checkpointer
  from jdiff.train.optim import make_optimizer
  from jdiff.train.update import init_train_state

  ev = scripts["eval"]
  cfg = _load("configs", "tracerl").get_config()
  cfg.model.preset = "tiny_sdar"
  cfg.task.num_train, cfg.task.num_eval = 16, 4
  cfg.eval.batch_size = 4
  cfg.eval.sampler.gen_length = 4
  model, _ = setup.load_policy(cfg.model, seed=123)  # not the weights eval would build
  _, state = init_train_state(model, make_optimizer(dict(cfg.optim)))
  workdir = str(tmp_path / "rl")
  ckpt = Checkpointer(workdir)
  ckpt.save(3, {"policy": state}, meta={"results": {}}, force=True)
  ckpt.wait()
  ckpt.close()

  config, reader, step = ev._resolve(cfg, None, workdir)
  assert step == 3
  fresh, _ = setup.load_policy(config.model, config.seed)
  restored = ev._restore_policy(fresh, config, reader, step)
  for a, b in zip(
      jax.tree.leaves(nnx.state(restored, nnx.Param)), jax.tree.leaves(nnx.state(model, nnx.Param))
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  results = ev.run(cfg, workdir=workdir, log=lambda *_: None)
  assert results["checkpoint_step"] == 3 and 0.0 <= results["accuracy_static"] <= 1.0
  assert os.path.exists(os.path.join(workdir, "eval.json"))


@pytest.mark.parametrize("name", ["sft_llada", "sft_semi_ar"])
def test_sft_full_attention_configs_run(scripts, tmp_path, name):
  import jdiff

  cfg = _small_sft_config(name, steps=2, batch_size=4)
  res = scripts["sft"].run(cfg, str(tmp_path), log=lambda *_: None)
  assert np.isfinite(res["loss_after"])
  model = jdiff.from_pretrained(os.path.join(str(tmp_path), "model"))
  assert model.config.family == ("llada" if name == "sft_llada" else "dream")
  assert model.config.vocab_size == 128 and model.config.mask_token_id == 1
