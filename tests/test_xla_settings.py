"""The suite's XLA settings (tests/conftest.py) give the answers of XLA's default settings.

The suite compiles with ``--xla_backend_optimization_level=0`` to save LLVM's time. This
checks the premise, bit for bit: the tiny VGG's forward pass, its gradients and a whole
interpretation (boundaries, solver, heat maps, ranking), computed in this process and in
one with the default level and no compilation cache.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import TINY
from ri_jax.interpreter import RepresentativeInterpreter
from ri_jax.models.vgg import make_vgg

HERE = Path(__file__).resolve().parent
LOW = "--xla_backend_optimization_level=0"


def compute() -> dict[str, np.ndarray]:
    fns = make_vgg(TINY)
    params = fns.init(jax.random.key(0))
    xs = fns.normalize(np.random.default_rng(0).random((24, 32, 32, 3), dtype=np.float32))
    psi = fns.features(params, xs)
    grads = jax.grad(lambda p: fns.head(params, p)[:, 0].sum())(psi)
    interpreter = RepresentativeInterpreter(
        lambda x: fns.features(params, x), lambda p: fns.head(params, p), xs,
        key=jax.random.key(1), num_boundaries=6, batch_size=8, progress=False)
    answer = interpreter.interpret_batch(xs[:5], top_k=3)
    arrays = {"psi": psi, "logits": fns.head(params, psi), "grads": grads}
    arrays.update({f"answer_{name}": value for name, value in answer._asdict().items()
                   if value is not None})  # pool_w, pool_b: None with the shared sample
    return {name: np.asarray(value) for name, value in arrays.items()}


def test_low_llvm_optimisation_gives_the_default_answers(tmp_path):
    flags = os.environ.get("XLA_FLAGS", "")
    if LOW not in flags:
        pytest.skip(f"XLA_FLAGS does not hold {LOW}: the suite already runs XLA's default level")
    out = tmp_path / "default.npz"
    env = {**os.environ, "XLA_FLAGS": flags.replace(LOW, ""), "JAX_PLATFORMS": "cpu",
           "JAX_ENABLE_COMPILATION_CACHE": "false",
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    script = f"import numpy, test_xla_settings as t; numpy.savez({str(out)!r}, **t.compute())"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ours, default = compute(), np.load(out)
    assert set(ours) == set(default) and len(ours) > 3
    for name in ours:
        np.testing.assert_array_equal(ours[name], default[name], err_msg=name)
    assert np.abs(ours["grads"]).max() > 0  # the gradients are not trivially zero
