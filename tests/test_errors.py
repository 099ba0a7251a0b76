"""ri_jax.errors.all_finite: the host (NumPy) path and the compiled reduction agree."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ri_jax.errors import _all_finite, all_finite

BAD = [None, np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("where", [0, 5, -1])
def test_host_and_device_paths_agree(dtype, bad, where):
    a = np.random.default_rng(0).standard_normal((3, 4)).astype(dtype)
    other = np.ones(2, np.float32)
    if bad is not None:
        a.reshape(-1)[where] = bad
    want = bad is None
    assert all_finite(a, other) is want  # NumPy arrays
    assert all_finite(jnp.asarray(a), jnp.asarray(other)) is want  # JAX arrays on the CPU
    assert all_finite(jnp.asarray(a), other) is want  # mixed
    assert bool(_all_finite((jnp.asarray(a), jnp.asarray(other)))) is want  # the reduction


def test_integer_arrays_are_finite():
    assert all_finite(np.arange(3), jnp.arange(3)) and bool(_all_finite((jnp.arange(3),)))
