"""The suite's XLA settings (tests/conftest.py) give the answers of XLA's default settings.

The suite compiles with ``conftest.TEST_XLA_FLAGS`` to save compilation time. This checks
the premise on the tiny VGG's forward pass, its gradients and a whole interpretation
(boundaries, solver, heat maps, ranking), computed in this process and in one with XLA's
default settings and no compilation cache: every discrete answer (classes, selections,
coverage, rankings) is the same, and every float agrees within 1e-5. (LLVM's level 0
changes the last bits of the features, so floats are not compared bit for bit.)
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xla_sample
from conftest import TEST_XLA_FLAGS, TINY

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_the_suites_xla_flags_give_the_default_answers(tmp_path):
    flags = os.environ.get("XLA_FLAGS", "").split()
    ours = [flag for flag in TEST_XLA_FLAGS if flag in flags]
    if not ours:
        pytest.skip("XLA_FLAGS holds none of the suite's flags: nothing to compare")
    out = tmp_path / "default.npz"
    env = {**os.environ, "XLA_FLAGS": " ".join(f for f in flags if f not in ours),
           "JAX_PLATFORMS": "cpu", "JAX_ENABLE_COMPILATION_CACHE": "false",
           "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run([sys.executable, str(HERE / "xla_sample.py"), str(out),
                           TINY.to_json()],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    here, default = xla_sample.compute(TINY), np.load(out)
    assert set(here) == set(default) and len(here) > 3
    for name in here:
        if np.issubdtype(here[name].dtype, np.floating):
            np.testing.assert_allclose(here[name], default[name], rtol=1e-5, atol=1e-5,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(here[name], default[name], err_msg=name)
    assert np.abs(here["grads"]).max() > 0  # the gradients are not trivially zero
