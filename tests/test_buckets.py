"""Shape buckets: the sizes batches are padded to, and padding that is dropped again."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ri_jax.buckets import bucket_size, first_rows, pad_rows, repeat_last_row


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 100_000))
def test_bucket_size_pads_by_less_than_a_quarter_beyond_eight(n):
    size = bucket_size(n)
    assert size >= n and bucket_size(size) == size and bucket_size(n + 1) >= size
    if n <= 8:
        assert size & (size - 1) == 0 and size < 2 * n  # the next power of two
    else:
        assert 4 * (size - n) < n


def test_bucket_sizes():
    assert [bucket_size(n) for n in range(1, 18)] == [1, 2, 4, 4, 8, 8, 8, 8, 10, 10, 12, 12,
                                                      14, 14, 16, 16, 20]
    assert len({bucket_size(n) for n in range(1, 1025)}) == 32


@pytest.mark.parametrize("n", [0, -3])
def test_bucket_size_needs_a_row(n):
    with pytest.raises(ValueError, match="n: expected at least one row"):
        bucket_size(n)


def test_pad_rows_on_the_host_and_on_the_device_agree():
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    host = pad_rows(x, 5)
    assert isinstance(host, np.ndarray) and host.shape == (5, 2, 2)
    np.testing.assert_array_equal(host[:3], x)
    assert not host[3:].any()
    np.testing.assert_array_equal(pad_rows(jnp.asarray(x), 5), host)
    assert pad_rows(x, 3) is x


def test_repeat_last_row_then_first_rows_round_trips_a_tree():
    tree = {"feats": jnp.arange(6.0).reshape(3, 2), "keys": jax.random.split(jax.random.key(0), 3),
            "none": None}
    padded = repeat_last_row(tree, size=8)
    assert padded["feats"].shape == (8, 2) and padded["keys"].shape == (8,)
    assert padded["none"] is None
    np.testing.assert_array_equal(padded["feats"][3:], np.tile(tree["feats"][-1:], (5, 1)))
    np.testing.assert_array_equal(jax.random.key_data(padded["keys"][3:]),
                                  np.tile(jax.random.key_data(tree["keys"][-1:]), (5, 1)))
    back = first_rows(padded, rows=3)
    np.testing.assert_array_equal(back["feats"], tree["feats"])
    np.testing.assert_array_equal(jax.random.key_data(back["keys"]),
                                  jax.random.key_data(tree["keys"]))
