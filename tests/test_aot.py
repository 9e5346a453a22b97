"""Ahead-of-time compilation for TPU topologies on the CPU test host (jdiff.aot)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

pytest.importorskip("libtpu")

from jdiff import aot  # noqa: E402
from jdiff.models import preset  # noqa: E402

GiB = 1024**3


def _loss_grad_report(topology, mesh_shape, batch, length, **overrides):
  """Masked cross-entropy and its gradient wrt every parameter of tiny_sdar."""
  mesh = aot.topology_mesh(topology, mesh_shape)
  graphdef, state = aot.abstract_model(preset("tiny_sdar", **overrides), mesh)
  rows = aot.abstract_batch(
      mesh, {"tokens": ((batch, length), jnp.int32), "weights": ((batch, length), jnp.float32)}
  )

  def loss_grad(state, rows):
    def loss(state):
      logits, _ = nnx.merge(graphdef, state)(rows["tokens"])
      lp = jnp.take_along_axis(jax.nn.log_softmax(logits), rows["tokens"][..., None], -1)
      return -jnp.sum(lp[..., 0] * rows["weights"]) / jnp.maximum(jnp.sum(rows["weights"]), 1)

    return jax.value_and_grad(loss)(state)

  return aot.compile_program(
      f"loss_grad_{batch}x{length}",
      loss_grad,
      (state, rows),
      (aot.shardings_of(state), aot.shardings_of(rows)),
  )


def test_single_host_v5e_compiles_and_fits():
  report = _loss_grad_report("v5e:2x2", (1, 4, 1), batch=8, length=64)
  assert report.chip is aot.CHIPS["v5e"] and report.devices == 4
  for value in (
      report.argument_bytes,
      report.output_bytes,
      report.temp_bytes,
      report.flops,
      report.bytes_accessed,
  ):
    assert value > 0
  # The gradient's output holds one copy of the (fsdp-sharded) float32 parameters at least.
  params = preset("tiny_sdar").num_params() * 4
  assert report.output_bytes >= params // 4
  assert report.roofline_s == max(report.flops / 197e12, report.bytes_accessed / 819e9)
  assert aot.verdict([report]) == "fits: yes"
  assert "loss_grad_8x64" in aot.format_table([report])
  assert jax.default_backend() == "cpu"  # compiling for TPU left the default backend alone


def test_multi_host_v5e_4x4_and_too_large_batch():
  devices = aot.topology_devices("v5e:4x4")
  assert len(devices) == 16 and len({d.process_index for d in devices}) == 4
  small = _loss_grad_report("v5e:4x4", (4, 4, 1), batch=16, length=64)
  assert small.devices == 16 and small.temp_bytes > 0 and small.flops > 0
  # 32 rows of 1024 x 65536 float32 logits per device are 8 GiB; the log-softmax and its
  # gradient need several such arrays: past a v5e chip's 16 GiB.
  big = _loss_grad_report("v5e:4x4", (4, 4, 1), batch=512, length=1024, vocab_size=65536)
  assert big.total_bytes > 16 * GiB
  assert "CompileTimeHbmOom" in big.oom  # the compiler refused it: figures from its message
  assert big.argument_bytes > 0 and big.argument_bytes < small.argument_bytes * 100
  text = aot.verdict([small, big])
  assert text.startswith(f"fits: no ({big.name} needs ")
  assert text.endswith(" of 16.00 GiB per device)")


def test_compile_time_oom_message_is_parsed():
  msg = (
      "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the total "
      "memory required for HLO temporaries (17.92G) exceeds available HBM (15.75G).\nmore"
  )
  temp, line = aot._compile_time_oom(msg)  # pylint: disable=protected-access
  assert temp == int(17.92 * GiB) and line.startswith("RESOURCE_EXHAUSTED") and "more" not in line
  # pylint: disable-next=protected-access
  assert aot._compile_time_oom("INTERNAL: something else") is None


def test_verdict_names_the_program_over_budget():
  base = aot.ProgramReport("a", aot.CHIPS["v5p"], 4, 1, GiB, GiB, 0, GiB, 1e12, 1e9)
  over = dataclasses.replace(base, name="b", temp_bytes=100 * GiB)
  assert aot.verdict([base]) == "fits: yes"
  assert aot.verdict([base, over]) == "fits: no (b needs 102.00 GiB of 95.00 GiB per device)"
  # The same programs checked against a smaller chip.
  assert aot.verdict([base], "v5e") == "fits: yes"
  assert aot.verdict([dataclasses.replace(base, temp_bytes=15 * GiB)], "v5e").startswith(
      "fits: no (a needs 17.00 GiB of 16.00 GiB"
  )


def test_bad_topology_and_mismatched_mesh():
  with pytest.raises(ValueError, match="unknown TPU topology 'v9:2x2'.*v4, v5e, v5p, v6e"):
    aot.topology_mesh("v9:2x2", (1, 4, 1))
  with pytest.raises(ValueError, match=r"mesh shape \(2, 4, 1\).*'v5e:2x2'.*4 devices"):
    aot.topology_mesh("v5e:2x2", (2, 4, 1))
  with pytest.raises(ValueError, match="unknown chip"):
    aot.verdict([], "v7")


def test_chunked_attention_compiles_for_tpu():
  """The chunked kernel (scans and lax.cond over tiles) lowers for TPU."""
  tiled = _loss_grad_report(
      "v5e:2x2",
      (1, 4, 1),
      batch=4,
      length=1024,
      attention_impl="chunked",
      attention_chunk_q=256,
      attention_chunk_k=256,
  )
  assert tiled.temp_bytes > 0 and tiled.flops > 0 and tiled.fits


def test_cost_analysis_sees_a_scanned_layer_once_and_flops_can_be_given():
  """Documents why compile_program takes ``flops``: 8 scanned layers count as about 2."""
  mesh = aot.topology_mesh("v5e:2x2", (1, 4, 1))
  rows = aot.abstract_batch(mesh, {"t": ((8, 64), jnp.int32)})
  got = {}
  for layers in (2, 8):
    graphdef, state = aot.abstract_model(preset("tiny_sdar", num_layers=layers), mesh)
    fwd = lambda s, r, g=graphdef: nnx.merge(g, s)(r["t"])[0]  # noqa: E731
    args = ((state, rows), (aot.shardings_of(state), aot.shardings_of(rows)))
    got[layers] = aot.compile_program("fwd", fwd, *args).flops
    if layers == 8:
      given = aot.compile_program("fwd", fwd, *args, flops=1e15)
  assert got[8] < 1.1 * got[2]
  assert given.flops == 1e15 and given.roofline_s >= 1e15 / 197e12
