"""Shared fixtures: a tiny VGG so the suite stays fast on 2 CPU cores.

The suite runs on every core (pytest-xdist, ``-n auto`` in pyproject.toml) and shares
one JAX persistent compilation cache, made fresh for the session, between its workers
and the scripts its tests start as subprocesses: they compile the same tiny model
again and again. A cached executable is the one XLA would compile, so nothing
checked changes; set ``JAX_COMPILATION_CACHE_DIR`` yourself to keep or move it.
"""

import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # before jax is imported (read at import)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ri-jax-test-xla-")
    os.environ["RI_JAX_TEST_OWNS_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax
import numpy as np
import pytest

from ri_jax.models.vgg import ModelConfig, make_vgg
from ri_jax.protocols import methods

TINY = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2, class_names=("a", "b"))


@pytest.fixture(scope="session")
def tiny_config():
    return TINY


@pytest.fixture(scope="session")
def tiny_model():
    fns = make_vgg(TINY)
    return fns, fns.init(jax.random.key(0))


PROTOCOL_SIZE = 32  # image side of protocol_model's images (the tiny VGG's input size)


def balanced(fns, params, raw):
    """Shifts the last bias so the tiny random model predicts both classes on ``raw``."""
    logits = np.asarray(fns.apply(params, fns.normalize(raw)))
    shift = np.median(logits[:, 0] - logits[:, 1])
    p = jax.tree.map(lambda a: a, params)
    p["params"]["fc_2"]["bias"] = params["params"]["fc_2"]["bias"].at[1].add(shift)
    return p


@pytest.fixture(scope="session")
def protocol_model(tiny_model):
    """(fns, params, raw [24, 32, 32, 3], psi, classes) of the tiny VGG, predicting both classes."""
    fns, params = tiny_model
    rng = np.random.default_rng(0)
    s = PROTOCOL_SIZE
    raw = (rng.random((24, s, s, 3)) * rng.random((24, 1, 1, 3))).astype(np.float32)
    params = balanced(fns, params, raw)
    psi = np.asarray(fns.features(params, fns.normalize(raw)))
    classes = np.asarray(fns.head(params, psi)).argmax(-1).astype(np.int32)
    assert 0 < classes.mean() < 1  # both classes present, so RI has work to do
    return fns, params, raw, psi, classes


@pytest.fixture(scope="session")
def protocol_ri(protocol_model):
    """(interpreter, RIInterpretations) at protocol_model's first 5 images, |Q| = 8."""
    fns, params, raw, psi, _ = protocol_model
    interpreter = methods.make_interpreter(fns, params, psi, key=jax.random.key(3), num_boundaries=8)
    return interpreter, methods.ri_interpretations(interpreter, fns, raw[:5], chunk_size=2)


def pytest_unconfigure(config):
    """The process that made the session's compilation cache removes it (not the workers)."""
    owned = os.environ.get("RI_JAX_TEST_OWNS_CACHE")
    if owned and not hasattr(config, "workerinput") and owned == os.environ.get(
            "JAX_COMPILATION_CACHE_DIR"):
        shutil.rmtree(owned, ignore_errors=True)
