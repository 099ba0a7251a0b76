"""Sharded stages (ri_jax.sharding) give exactly the one-device results.

The multi-device checks run in a subprocess with 4 forced host devices, since
XLA_FLAGS must be set before JAX initialises; the rest runs on this process's
single CPU device.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import forced_devices
from ri_jax import sharding, solver
from ri_jax.boundaries import Boundaries, _sides_packed, side_bits
from ri_jax.models.vgg import make_vgg, vgg_model
from ri_jax.solver import positive_words, _solve_batch
from ri_jax.bits import pack_bits

ROOT = Path(__file__).resolve().parents[1]

MULTI_DEVICE_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from ri_jax import sharding, solver
    from ri_jax.boundaries import Boundaries, side_bits, _sides_packed
    from ri_jax.models.vgg import ModelConfig, make_vgg, vgg_model
    from ri_jax.solver import positive_words, _solve_batch
    from ri_jax.bits import pack_bits

    assert jax.device_count() == 4, jax.devices()
    mesh = sharding.make_mesh()
    one = sharding.make_mesh(jax.devices()[:1])
    rng = np.random.default_rng(0)

    # shard_batch: padded to a multiple of 4, one equal shard per device, data kept.
    x = rng.normal(size=(10, 3)).astype(np.float32)
    placed = sharding.shard_batch(x, mesh)
    assert placed.shape == (12, 3) and len(placed.addressable_shards) == 4
    assert {s.data.shape for s in placed.addressable_shards} == {(3, 3)}
    np.testing.assert_array_equal(np.asarray(placed)[:10], x)
    assert not np.asarray(placed)[10:].any()

    # Features: 4 devices == 1 device at the same per-device batch, ≈ the plain forward.
    config = ModelConfig(arch="vgg11", width=1 / 16, image_size=32, num_classes=2)
    fns = make_vgg(config)
    shapes = jax.eval_shape(fns.init, jax.random.key(0))
    params = jax.tree.map(lambda s: (rng.normal(size=s.shape) * np.sqrt(
        2 / max(1, int(np.prod(s.shape[:-1]))))).astype(np.float32) if len(s.shape) > 1
        else np.zeros(s.shape, np.float32), shapes)
    raw = rng.random((7, 32, 32, 3)).astype(np.float32)
    model = vgg_model(params, config)
    four = sharding.sharded_features(model, raw, mesh, batch_size=2)
    single = sharding.sharded_features(model, raw, one, batch_size=2)
    np.testing.assert_array_equal(four.psi, single.psi)
    np.testing.assert_array_equal(four.logits, single.logits)
    psi = jax.jit(lambda p, r: fns.features(p, fns.normalize(r)))(params, raw)
    np.testing.assert_allclose(four.psi, np.asarray(psi), rtol=1e-5, atol=1e-5)
    assert four.psi.shape == (7, 2, 2, 32) and np.abs(four.psi).max() > 0

    # Sides: N = 70 is not a multiple of 4 · 32, so shares and words are padded.
    bounds = Boundaries(w=jnp.asarray(rng.normal(size=(5, 2, 2, 32)), jnp.float32),
                        b=jnp.asarray(rng.normal(size=5), jnp.float32))
    feats = np.maximum(rng.normal(size=(70, 2, 2, 32)), 0).astype(np.float32)
    np.testing.assert_array_equal(side_bits(bounds, feats, packed=False, mesh=mesh),
                                  np.asarray(side_bits(bounds, feats, packed=False)))
    words = side_bits(bounds, feats, mesh=mesh)
    np.testing.assert_array_equal(words, np.asarray(_sides_packed(bounds, feats)))

    # Solve: B = 7 inputs over 4 devices, with each input's tau and with given bounds.
    x_sides = rng.random((7, 5)) < 0.5
    preds = rng.integers(0, 2, 70)
    x_preds = rng.integers(0, 2, 7)
    positive = np.asarray(pack_bits(jnp.asarray(preds[None] == x_preds[:, None])))
    bounds_given = rng.integers(0, 5, 7).astype(np.int32)
    for delta, chunk in ((None, "auto"), (bounds_given, None), (None, 3)):
        ours = solver._sharded_solve_batch(words, 70, x_sides, positive, delta, mesh=mesh,
                                            lanes=chunk)
        ref = _solve_batch(jnp.asarray(words), 70, jnp.asarray(x_sides), jnp.asarray(positive),
                          None if delta is None else jnp.asarray(delta))
        for name, a, b in zip(ref._fields, ours, ref):
            np.testing.assert_array_equal(a, np.asarray(b), err_msg=name)
        assert ours.num_selected.max() > 0
        # The class-blocked solve, three classes (one absent from the inputs), same answers.
        preds3 = rng.integers(0, 3, 70)
        x_preds3 = rng.integers(0, 2, 7)
        blocked = solver._sharded_solve_classes(words, x_sides, preds3, x_preds3, delta,
                                                 num_classes=3, mesh=mesh, lanes=chunk)
        ref = _solve_batch(jnp.asarray(words), 70, jnp.asarray(x_sides),
                          positive_words(preds3, x_preds3, num_classes=3),
                          None if delta is None else jnp.asarray(delta))
        for name, a, b in zip(ref._fields, blocked, ref):
            np.testing.assert_array_equal(a, np.asarray(b), err_msg=name)

    # The public entry points with mesh= give the one-device answers: per-input pools
    # (B = 7, Q = 5) for the side bits, and solve() on shared and per-input side words
    # with the authors' extras and loosen step.
    pools = Boundaries(w=jnp.asarray(rng.normal(size=(7, 5, 2, 2, 32)), jnp.float32),
                       b=jnp.asarray(rng.normal(size=(7, 5)), jnp.float32))
    own = side_bits(pools, feats, mesh=mesh)
    np.testing.assert_array_equal(own, np.asarray(side_bits(pools, feats)))
    for side_words, x in ((words, x_sides), (own, rng.random((7, 5)) < 0.5)):
        for delta in (None, np.zeros(7, np.int32)):
            kwargs = dict(ref_classes=preds3, x_classes=x_preds3, num_classes=3, delta=delta,
                          keep_adding=True, loosen=True)
            split, split_greedy = solver.solve(side_words, x, mesh=mesh, **kwargs)
            ref, ref_greedy = solver.solve(jnp.asarray(side_words), x, **kwargs)
            for name, a, b in zip(ref._fields, split, ref):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
            np.testing.assert_array_equal(np.asarray(split_greedy), np.asarray(ref_greedy))
    print("OK")
""")


@pytest.mark.slow
def test_four_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": forced_devices(4),
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-4000:]


def test_shard_batch_pads_to_the_device_count():
    mesh = sharding.make_mesh(jax.devices()[:1])
    x = np.arange(6, dtype=np.int32).reshape(3, 2)
    placed = sharding.shard_batch(x, mesh, size=5)
    assert placed.shape == (5, 2)
    np.testing.assert_array_equal(np.asarray(placed), np.pad(x, ((0, 2), (0, 0))))
    assert sharding.padded_size(33, mesh, granule=32) == 64
    assert sharding.padded_size(64, mesh, granule=32) == 64


def test_bad_arguments_raise_value_errors(tiny_config):
    mesh = sharding.make_mesh()
    with pytest.raises(ValueError, match="devices"):
        sharding.make_mesh([])
    with pytest.raises(ValueError, match="mesh"):
        sharding.shard_batch(np.zeros(3), "not a mesh")
    with pytest.raises(ValueError, match="size"):
        sharding.shard_batch(np.zeros(3), mesh, size=2)
    with pytest.raises(ValueError, match="x"):
        sharding.shard_batch(np.float32(1), mesh)
    words = np.zeros((2, 1), np.uint32)
    with pytest.raises(ValueError, match="side_words"):
        solver._sharded_solve_batch(words.astype(np.int32), 5, np.zeros((1, 2), bool),
                                     np.zeros((1, 1), np.uint32), mesh=mesh)
    with pytest.raises(ValueError, match="num_refs"):
        solver._sharded_solve_batch(words, 33, np.zeros((1, 2), bool),
                                     np.zeros((1, 1), np.uint32), mesh=mesh)
    with pytest.raises(ValueError, match="x_sides"):
        solver._sharded_solve_batch(words, 5, np.zeros((1, 3), bool),
                                     np.zeros((1, 1), np.uint32), mesh=mesh)
    with pytest.raises(ValueError, match="positive_words"):
        solver._sharded_solve_batch(words, 5, np.zeros((1, 2), bool),
                                     np.zeros((2, 1), np.uint32), mesh=mesh)
    with pytest.raises(ValueError, match="delta"):
        solver._sharded_solve_batch(words, 5, np.zeros((1, 2), bool),
                                     np.zeros((1, 1), np.uint32), np.array([-1]), mesh=mesh)
    with pytest.raises(ValueError, match="lanes"):
        solver._sharded_solve_batch(words, 5, np.zeros((1, 2), bool),
                                     np.zeros((1, 1), np.uint32), mesh=mesh, lanes=0)
    bounds = Boundaries(w=jnp.zeros((2, 3)), b=jnp.zeros(2))
    with pytest.raises(ValueError, match="feats"):
        side_bits(bounds, np.zeros((4, 5), np.float32), packed=False, mesh=mesh)
    with pytest.raises(ValueError, match="feats"):
        side_bits(bounds, np.full((4, 3), np.nan, np.float32), mesh=mesh)
    with pytest.raises(ValueError, match="model"):
        sharding.sharded_features(None, np.zeros((1, 32, 32, 3)), mesh)
    with pytest.raises(ValueError, match="raw_images"):
        model = vgg_model(make_vgg(tiny_config).init(jax.random.key(0)), tiny_config)
        sharding.sharded_features(model, np.zeros((1, 32, 32)), mesh)


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(n=st.sampled_from([1, 33, 70]), chunk=st.sampled_from([None, 2, "auto"]),
       seed=st.integers(0, 2**32 - 1))
def test_one_device_sides_and_solve_match_unsharded(n, chunk, seed):
    q = 4
    rng = np.random.default_rng(seed)
    mesh = sharding.make_mesh()
    bounds = Boundaries(w=jnp.asarray(rng.normal(size=(q, 6)), jnp.float32),
                        b=jnp.asarray(rng.normal(size=q), jnp.float32))
    feats = rng.normal(size=(n, 6)).astype(np.float32)
    words = side_bits(bounds, feats, mesh=mesh)
    np.testing.assert_array_equal(words, np.asarray(_sides_packed(bounds, feats)))
    x_sides = rng.random((3, q)) < 0.5
    positive = np.asarray(pack_bits(jnp.asarray(rng.random((3, n)) < 0.5)))
    ours = solver._sharded_solve_batch(words, n, x_sides, positive, mesh=mesh, lanes=chunk)
    ref = _solve_batch(jnp.asarray(words), n, jnp.asarray(x_sides), jnp.asarray(positive))
    for name, a, b in zip(ref._fields, ours, ref):
        np.testing.assert_array_equal(a, np.asarray(b), err_msg=name)
    ref_preds, x_preds = rng.integers(0, 2, n), rng.integers(0, 2, 3)
    ours = solver._sharded_solve_classes(words, x_sides, ref_preds, x_preds, num_classes=2,
                                          mesh=mesh, lanes=chunk)
    ref = _solve_batch(jnp.asarray(words), n, jnp.asarray(x_sides),
                      positive_words(ref_preds, x_preds, num_classes=2))
    for name, a, b in zip(ref._fields, ours, ref):
        np.testing.assert_array_equal(a, np.asarray(b), err_msg=name)
