"""Tiny policy models shared by the RL method tests (toy data helpers: tests/rl_toys.py)."""

import pytest
from flax import nnx

import jdiff


@pytest.fixture(scope="module")
def models():
  """``models(preset)``: a tiny model built once per module (seed 0; tests never mutate it,
  updates are functional)."""
  cache = {}

  def get(preset):
    if preset not in cache:
      cache[preset] = jdiff.DiffusionLM(jdiff.preset(preset), rngs=nnx.Rngs(0))
    return cache[preset]

  return get


@pytest.fixture(scope="module")
def llada(models):
  return models("tiny_llada")
