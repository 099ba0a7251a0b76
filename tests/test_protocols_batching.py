"""The fixed-size chunking of ri_jax.protocols.batching."""

import chex
import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax.protocols import batching

S = 32
FEW = settings(max_examples=40, deadline=None)


# ---- map_chunks -------------------------------------------------------------------------------

@FEW
@given(n=st.integers(1, 23), chunk=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_map_chunks_equals_one_call(n, chunk, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 3)), rng.integers(0, 9, size=n)
    got = batching.map_chunks(lambda x, y: (x * 2, y + 1), (a, b), chunk)
    np.testing.assert_array_equal(got[0], a * 2)
    np.testing.assert_array_equal(got[1], b + 1)


def test_map_chunks_compiles_once_per_chunk_shape():
    f = jax.jit(chex.assert_max_traces(lambda x: x + 1, n=1))
    np.testing.assert_array_equal(batching.map_chunks(f, (np.arange(10.0),), 4), np.arange(10.0) + 1)
