"""row_threads: a batch split among host threads, each calling the compiled sampler on its
rows at once (``row_shards.in_host_threads``), gives the one-call result."""

import dataclasses
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jdiff
from jdiff.sampling import block, common, llada, row_shards
from jdiff.sharding.rules import SAMPLING_RULES, TRAIN_RULES, active_rules, use_rules

PROMPTS = [
    [5, 6, 7, 8, 9],
    [10, 11, 12, 13, 14, 15, 16, 17],
    [20, 21, 22],
    [30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42],
]
LOGIT_SCALE = 30.0  # the LLaDA tests' LM head scale: a sharper softmax
ROW_FIELDS = ("tokens", "step_map", "num_steps", "lengths", "raw_tokens", "raw_step_map")


def _specs(batch):
  return {"rows": P(batch), "states": P(None, batch)}


# ----------------------------------------------------------------------------- the helper
@pytest.mark.parametrize("threads", [2, 4])  # in this order: the shared pool then grows
def test_groups_run_at_once_with_offsets_and_context(threads):
  """Each group runs in its own thread at the same time (a barrier all must reach), sees
  its rows and their global offset and the caller's context (the active rules); outputs
  are reassembled along each leaf's row axis."""
  x = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  all_running = threading.Barrier(threads, timeout=30)
  seen = []

  def call(rows, row_offset):
    (local,) = rows
    all_running.wait()  # calls that did not run at once would time out here
    seen.append((threading.current_thread().name, int(row_offset), active_rules()))
    return {"rows": local * 2, "states": jnp.stack([local, local + 100])}

  with use_rules(SAMPLING_RULES):
    out = row_shards.in_host_threads(call, threads, _specs, (x,))
  assert sorted(s[1] for s in seen) == list(range(0, 8, 8 // threads))
  assert len({s[0] for s in seen}) == threads
  assert all(s[0].startswith("jdiff-rows") for s in seen)
  assert all(s[2] is SAMPLING_RULES for s in seen) and active_rules() is TRAIN_RULES
  np.testing.assert_array_equal(out["rows"], 2 * x)
  np.testing.assert_array_equal(out["states"], np.stack([x, x + 100]))


def test_a_failing_group_raises():
  def call(rows, row_offset):
    if int(row_offset):
      raise RuntimeError("group at row 2 failed")
    return {"rows": rows[0], "states": rows[0][None]}

  with pytest.raises(RuntimeError, match="group at row 2"):
    row_shards.in_host_threads(call, 2, _specs, (np.zeros((4, 2)),))


def test_thread_counts():
  check = row_shards.check_row_threads
  assert check(1, 4, "X.row_threads") == 1
  assert check(2, 4, "X.row_threads") == 2
  assert check(8, 4, "X.row_threads") == 4  # more threads than rows: one row each
  assert check(8, 1, "X.row_threads") == 1
  with pytest.raises(ValueError, match=r"X.row_threads=3: must divide the batch of 4 rows"):
    check(3, 4, "X.row_threads")
  # rows_per_loop then divides each thread's rows (the LLaDA sampler's check)
  with pytest.raises(
      ValueError,
      match=r"X.rows_per_loop=3: must divide each of the 2 host "
      r"threads' 8 rows \(or be >= it\)",
  ):
    row_shards.check_rows_per_loop(3, 16, 2, "X.rows_per_loop", "host threads")


@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 (fake) devices")
def test_no_threads_under_a_mesh_of_several_devices():
  with jax.set_mesh(jdiff.sharding.make_mesh((2, 1, 1))):
    with pytest.raises(
        ValueError,
        match=r"X.row_threads=2: host threads run on one device; " r"under a mesh of 2 devices",
    ):
      row_shards.check_row_threads(2, 4, "X.row_threads")
  with jax.set_mesh(jdiff.sharding.make_mesh((1, 1, 1))):  # a training loop's on one device
    assert row_shards.check_row_threads(2, 4, "X.row_threads") == 2


# ----------------------------------------------------------------------------- block sampler
@pytest.fixture(scope="module")
def sdar(hf_checkpoints, jdiff_models):
  """The tiny SDAR model with its EOS column scaled up, so rows stop at different steps."""
  m = nnx.clone(jdiff_models(hf_checkpoints("sdar")))
  w = np.array(m.lm_head[...])
  w[:, m.config.eos_token_id] *= 1.5
  m.lm_head[...] = jnp.asarray(w)
  return m


def _block(m, cfg, prompts=PROMPTS, key=3):
  return jax.device_get(block.sample(m, prompts, None, jax.random.key(key), cfg, bucket=16))


@pytest.mark.parametrize("threads", [2, 8])
def test_block_threads_match_one_call(sdar, threads, monkeypatch, compile_events):
  """Sampled decoding with EOS stopping: each thread's call draws with its rows' global
  keys, so tokens, step maps, states and log-probs equal one call over the batch. 8 threads
  for 4 rows: one row each. A second threaded call with new prompts compiles nothing."""
  cfg = block.BlockSamplerConfig(
      gen_length=10,
      steps_per_block=2,
      temperature=0.3,
      top_p=0.95,
      threshold=0.2,
      record_states=True,
      stop_ids=(sdar.config.eos_token_id,),
  )
  one = _block(sdar, cfg)
  assert len(set(one.num_steps.tolist())) > 1  # the threads' loops differ in length
  calls = []
  compiled = block._generate_jit

  def spy(*args, **kwargs):
    calls.append((threading.current_thread().name, int(args[-1]), args[2].shape[0]))
    return compiled(*args, **kwargs)

  monkeypatch.setattr(block, "_generate_jit", spy)
  threaded_cfg = dataclasses.replace(cfg, row_threads=threads)
  traj = _block(sdar, threaded_cfg)
  n = min(threads, len(PROMPTS))
  assert sorted(c[1] for c in calls) == list(range(0, len(PROMPTS), len(PROMPTS) // n))
  assert {c[2] for c in calls} == {len(PROMPTS) // n} and len({c[0] for c in calls}) == n
  for field in ROW_FIELDS + ("states",):
    np.testing.assert_array_equal(getattr(traj, field), getattr(one, field), err_msg=field)
  np.testing.assert_allclose(traj.logprobs, one.logprobs, rtol=1e-5, atol=1e-6)
  compile_events.clear()
  _block(sdar, threaded_cfg, prompts=[[7] * 16, [9, 8], list(range(50, 61)), [4]], key=5)
  assert compile_events == []


@pytest.mark.parametrize(
    "value, match",
    [
        (0, r"BlockSamplerConfig.row_threads=0: must be a positive int"),
        (True, r"BlockSamplerConfig.row_threads=True: must be a positive int"),
        (3, r"BlockSamplerConfig.row_threads=3: must divide the batch of 4 rows"),
    ],
)
def test_block_thread_errors(sdar, value, match):
  with pytest.raises(ValueError, match=match):
    _block(sdar, block.BlockSamplerConfig(gen_length=4, row_threads=value))


# ----------------------------------------------------------------------------- LLaDA sampler
@pytest.fixture(scope="module")
def confident_llada(hf_checkpoints):
  """The tiny LLaDA model with a sharpened softmax, so threshold steps commit several."""
  m = jdiff.from_pretrained(hf_checkpoints("llada").path, dtype="float32")
  m.lm_head[...] = m.lm_head[...] * LOGIT_SCALE
  return m


@pytest.fixture(scope="module")
def prompts():
  ids, mask, _ = common.left_pad(
      [[5, 6, 7], [8, 9, 10, 11, 12], [20, 21, 22, 23], [40, 41]], pad_id=1, length=8
  )
  return ids, mask


def _llada(m, prompts, **kw):
  ids, mask = prompts
  cfg = llada.LLaDASamplerConfig(**dict(dict(gen_length=16, block_length=8, steps=8), **kw))
  return jax.device_get(llada.sample(m, ids, mask, jax.random.key(11), cfg))


@pytest.mark.parametrize(
    "kw",
    [
        dict(
            threshold=0.9,
            steps=16,
            cache="dual",
            temperature=0.7,
            record_states=True,
            rows_per_loop=1,
        ),
        dict(temperature=1.0, remasking="random", eoser=True, record_states=True),
    ],
)
def test_llada_threads_match_one_call(confident_llada, prompts, kw):
  """Exact (random remasking, EOSER) and dual-cache threshold decoding, sampled, on 2
  threads of 2 rows: the one-call tokens, step maps, states and log-probs."""
  one = _llada(confident_llada, prompts, **kw)
  threaded = _llada(confident_llada, prompts, row_threads=2, **kw)
  for field in ROW_FIELDS + ("states",):
    np.testing.assert_array_equal(getattr(threaded, field), getattr(one, field), err_msg=field)
  # A 2-row program's float32 sums are grouped differently from the 4-row one's; the noise
  # is relative to the logits, which the LM head's scale makes LOGIT_SCALE times larger.
  np.testing.assert_allclose(
      threaded.raw_logprobs, one.raw_logprobs, rtol=1e-5, atol=1e-6 * LOGIT_SCALE
  )


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(row_threads=3), r"LLaDASamplerConfig.row_threads=3: must divide the batch of 4 rows"),
        (dict(row_threads=0), r"LLaDASamplerConfig.row_threads=0: must be a positive int"),
    ],
)
def test_llada_thread_errors(confident_llada, prompts, kw, match):
  with pytest.raises(ValueError, match=match):
    _llada(confident_llada, prompts, **kw)


def test_block_threads_in_a_one_device_rollout(sdar):
  """A training loop on one device samples under a (1, 1, 1) mesh: row_threads applies there
  (the threads run on that device) and the rollout equals the one-call rollout."""
  from jdiff.train import rollout as rollout_lib

  mesh = jdiff.sharding.make_mesh((1, 1, 1))
  m = jdiff.sharding.shard_model(nnx.clone(sdar), mesh, rules=SAMPLING_RULES)
  cfg = block.BlockSamplerConfig(
      gen_length=10,
      steps_per_block=2,
      temperature=0.3,
      top_p=0.95,
      threshold=0.2,
      stop_ids=(sdar.config.eos_token_id,),
  )
  out = [
      jax.device_get(rollout_lib.rollout(m, mesh, "block", c, PROMPTS, 0, 16, jax.random.key(4))[0])
      for c in (cfg, dataclasses.replace(cfg, row_threads=2))
  ]
  for field in ROW_FIELDS:
    np.testing.assert_array_equal(getattr(out[1], field), getattr(out[0], field), err_msg=field)
  np.testing.assert_allclose(out[1].logprobs, out[0].logprobs, rtol=1e-5, atol=1e-6)
