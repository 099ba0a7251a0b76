"""Multi-process runs: launch settings, shares, and 2 local CPU processes against 1, bit for bit."""

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import balanced, forced_devices
from ri_jax import distributed as dist
from ri_jax.boundaries import Boundaries, side_bits
from ri_jax.interpreter import RepresentativeInterpreter
from ri_jax.variants import ri_variant

WORKER = Path(__file__).with_name("distributed_worker.py")
ROOT = Path(__file__).parents[1]


@given(n=st.integers(0, 500), granule=st.integers(1, 70), count=st.integers(1, 9))
def test_shares_partition_the_items_in_whole_granules(n, granule, count):
    shares = [dist.share_range(n, granule, process_index=p, process_count=count)
              for p in range(count)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    for (a, b), (c, _) in zip(shares, shares[1:]):
        assert a <= b == c
    assert all(start % granule == 0 for start, stop in shares if stop > start)
    sizes = [-(-(b - a) // granule) for a, b in shares]
    assert max(sizes) - min(sizes) <= 1


# N within one word, on and across word and 1,024-reference chunk edges; N and |Q| from
# short lists so that examples reuse compiled shapes, the values drawn afresh each time.
@settings(max_examples=20, deadline=None)
@given(n=st.sampled_from([1, 31, 33, 1000, 1024, 1025, 2100]), q=st.sampled_from([1, 5]),
       seed=st.integers(0, 1000))
def test_chunked_sides_are_the_one_call_sides(n, q, seed):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, 3)).astype(np.float32)
    bounds = Boundaries(jnp.asarray(rng.standard_normal((q, 3)), jnp.float32),
                        jnp.asarray(rng.standard_normal(q), jnp.float32))
    want = np.asarray(side_bits(bounds, feats))
    np.testing.assert_array_equal(dist._distributed_side_bits(bounds, feats), want)
    chunk = dist.side_chunk_size(n)
    for first in range(0, n, chunk):
        np.testing.assert_array_equal(
            dist._chunk_side_bits(bounds, feats[first:first + 2 * chunk], chunk),
            want[:, first // 32:(first + 2 * chunk + 31) // 32])


def test_launch_settings_are_checked_and_read_from_the_environment():
    assert dist.check_launch(dist.LaunchConfig()) == dist.LaunchConfig()
    assert dist.check_launch(dist.LaunchConfig(None, 1, 0)) == dist.LaunchConfig()
    assert dist.check_launch(dist.LaunchConfig("auto")) == dist.LaunchConfig("auto")
    for bad, flag in [(dist.LaunchConfig(None, 2, 0), "--coordinator"),
                      (dist.LaunchConfig("host", 2, 0), "--coordinator"),
                      (dist.LaunchConfig("h:99999", 2, 0), "--coordinator"),
                      (dist.LaunchConfig("h:1234", 2, None), "--process-id"),
                      (dist.LaunchConfig("h:1234", 0, 0), "--num-processes"),
                      (dist.LaunchConfig("h:1234", 2, 2), "--process-id")]:
        with pytest.raises(ValueError, match=flag):
            dist.check_launch(bad)
    env = {dist.COORDINATOR_ENV: "10.0.0.1:1234", dist.NUM_PROCESSES_ENV: "4",
           dist.PROCESS_ID_ENV: "3"}
    assert dist.config_from_env(env) == dist.LaunchConfig("10.0.0.1:1234", 4, 3)
    assert dist.config_from_env({}) == dist.LaunchConfig()
    with pytest.raises(ValueError, match=dist.NUM_PROCESSES_ENV):
        dist.config_from_env({dist.NUM_PROCESSES_ENV: "two"})
    assert dist.initialize(dist.LaunchConfig()) is False  # one process: nothing to join


# Both variants, and the shared sample with the authors' δ = 0, extras and loosen step.
@pytest.mark.parametrize("variant", ["paper", "authors",
                                     ri_variant("paper", delta="zero", keep_adding=True,
                                                loosen=True)])
def test_one_process_distributed_interpreter_is_the_plain_one(tiny_model, variant):
    fns, params = tiny_model
    raw = np.random.default_rng(1).random((40, 32, 32, 3), dtype=np.float32)
    params = balanced(fns, params, raw)  # both classes: per-input pools have D(x) to search
    refs = fns.normalize(raw)
    args = (lambda x: fns.features(params, x), lambda p: fns.head(params, p), refs)
    kw = dict(key=jax.random.key(0), num_boundaries=6, batch_size=16, progress=False,
              variant=variant)
    plain, mine = RepresentativeInterpreter(*args, **kw), dist.sharded_interpreter(*args, **kw)
    for a, b in zip(jax.tree.leaves(plain.reference_set), jax.tree.leaves(mine.reference_set)):
        np.testing.assert_array_equal(a, b)
    assert mine.num_boundaries == plain.num_boundaries
    xs = refs[:5]
    for a, b in zip(jax.tree.leaves(plain.interpret_batch(xs, top_k=2)),
                    jax.tree.leaves(mine.interpret_batch(xs, top_k=2))):
        np.testing.assert_array_equal(a, b)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(commands, env, timeout_s: float):
    """Starts every command, waits at most ``timeout_s`` in all, kills them all on failure."""
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in commands]
    try:
        outputs = [p.communicate(timeout=timeout_s)[0] for p in procs]
    except subprocess.TimeoutExpired:
        outputs = None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert outputs is not None, f"processes did not finish in {timeout_s} s"
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]


def comparable(path: Path) -> dict:
    """The JSON minus what names the run rather than its results (its time and folders)."""
    payload = json.loads(path.read_text())
    for key in ("date", "out", "cache_dir"):
        payload["config"].pop(key)
    return payload


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_experiments_tables import write_images
    from ri_jax.checkpoint import save_checkpoint
    from ri_jax.models.vgg import make_vgg
    from conftest import TINY

    write_images(tmp_path / "data", np.random.default_rng(0))
    fns = make_vgg(TINY)
    save_checkpoint(tmp_path / "ckpt", fns.init(jax.random.key(0)), TINY)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
           # Two devices per process: the solve is sharded over 4 devices in 2 processes.
           "XLA_FLAGS": forced_devices(2)}
    base = [sys.executable, str(WORKER)]
    data, ckpt = str(tmp_path / "data"), str(tmp_path / "ckpt")
    coordinator = f"127.0.0.1:{free_port()}"
    # One process first: it fills the session's compilation cache with every program the
    # two processes share with it (all but the sharded ones), so they compile only those.
    run_processes([base + [str(tmp_path / "one"), data, ckpt]], env, timeout_s=240)
    run_processes([base + [str(tmp_path / "two"), data, ckpt, "--coordinator", coordinator,
                           "--num-processes", "2", "--process-id", str(rank)]
                   for rank in (0, 1)], env, timeout_s=240)
    # interpret/ ran the default variant (the authors' per-input pools), interpret_paper/
    # the paper's shared sample: a multi-process run of each writes what one process does.
    for name in ("interpret/summary.json", "interpret_paper/summary.json", "table2/table2.json"):
        one, two = comparable(tmp_path / "one" / name), comparable(tmp_path / "two" / name)
        assert one == two, name
    assert comparable(tmp_path / "one" / "interpret/summary.json")["config"]["ri_variant"] \
        == "authors"
    for name in ("interpret/summary.csv", "interpret_paper/summary.csv", "table2/table2.csv",
                 "table2/table2.md"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    for png in (tmp_path / "one" / "interpret").glob("*.png"):
        assert (tmp_path / "two" / "interpret" / png.name).is_file()


def test_per_input_chunks_shared_between_processes_give_the_one_process_answer(tiny_model,
                                                                               monkeypatch):
    # Two processes emulated one after the other: each runs its share of whole chunks (3
    # chunks of 2 inputs for 5 inputs), and their rows, concatenated as gather_shares does,
    # are the one-process answer.
    from ri_jax import interpreter as interpreter_module
    fns, params = tiny_model
    raw = np.random.default_rng(1).random((40, 32, 32, 3), dtype=np.float32)
    params = balanced(fns, params, raw)
    refs = fns.normalize(raw)
    mine = dist.sharded_interpreter(lambda x: fns.features(params, x),
                                    lambda p: fns.head(params, p), refs,
                                    key=jax.random.key(0), num_boundaries=6, batch_size=16,
                                    progress=False, variant="authors")
    per_input = 6 * (int(np.prod(mine.reference_set.feats.shape[1:])) + 40)
    monkeypatch.setattr(interpreter_module, "_POOL_CHUNK_FLOATS", 2 * per_input)
    feats = mine.features(refs[:5])
    preds = mine.predict_classes(feats)
    keys = mine._keys(None, 5)
    want = jax.device_get(mine._solve_pools(feats, preds, keys, 0, False))
    shares, share_range = [], dist.share_range
    monkeypatch.setattr(dist.jax, "process_count", lambda: 2)
    monkeypatch.setattr(dist, "gather_shares", lambda local, n, granule: local)
    for rank in (0, 1):
        monkeypatch.setattr(dist, "share_range", functools.partial(
            share_range, process_index=rank, process_count=2))
        shares.append(jax.device_get(mine._solve_pools(feats, preds, keys, 0, False)))
    assert len(shares[0][1].selected) == 4 and len(shares[1][1].selected) == 1
    got = jax.tree.map(lambda *parts: np.concatenate(parts), *shares)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(a, b)
