"""The sample tests/test_xla_settings.py computes in its own process and in a fresh one.

    python tests/xla_sample.py OUT.npz CONFIG_JSON

Kept apart from conftest.py, which adds the suite's XLA flags when it is imported.
"""

import json
import sys

import jax
import numpy as np

from ri_jax.interpreter import RepresentativeInterpreter
from ri_jax.models.vgg import ModelConfig, make_vgg


def compute(config: ModelConfig) -> dict[str, np.ndarray]:
    """The tiny VGG's features, logits and gradients, and a whole interpretation of 5 images."""
    fns = make_vgg(config)
    params = fns.init(jax.random.key(0))
    size = config.image_size
    xs = fns.normalize(np.random.default_rng(0).random((24, size, size, 3), dtype=np.float32))
    psi = fns.features(params, xs)
    grads = jax.grad(lambda p: fns.head(params, p)[:, 0].sum())(psi)
    interpreter = RepresentativeInterpreter(
        lambda x: fns.features(params, x), lambda p: fns.head(params, p), xs,
        key=jax.random.key(1), num_boundaries=6, batch_size=8, progress=False, variant="paper")
    answer = interpreter.interpret_batch(xs[:5], top_k=3)
    arrays = {"psi": psi, "logits": fns.head(params, psi), "grads": grads}
    fields = {**answer._asdict(), **{f"diagnostics_{name}": value for name, value
                                     in answer.diagnostics._asdict().items()}}
    del fields["diagnostics"]
    arrays.update({f"answer_{name}": value for name, value in fields.items()
                   if value is not None})  # pool_w, pool_b: None with the shared sample
    return {name: np.asarray(value) for name, value in arrays.items()}


if __name__ == "__main__":
    np.savez(sys.argv[1], **compute(ModelConfig.from_dict(json.loads(sys.argv[2]))))
