"""ri_jax: representative interpretations (Lam et al., ICCV 2021) for CNNs in JAX.

The pure functions of each step of the paper live in their own module (see the
README's table); the most used ones are re-exported here. ``explain`` goes from
images to printable, plottable interpretations in one call (``ri_jax.api``).
"""

from ri_jax.api import Explanation, Explanations, explain
from ri_jax.boundaries import Boundaries, sample_boundaries, sample_indices, side_bits
from ri_jax.heatmaps import cam, polytope_heatmap, ri_channel_weights
from ri_jax.interpreter import Diagnostics, Interpretation, RepresentativeInterpreter
from ri_jax.model import Model
from ri_jax.models.loading import load_model
from ri_jax.ranking import rank_covered, semantic_distance
from ri_jax.regions import DecisionRegions, covers, predict
from ri_jax.solver import GreedyResult, solve

__version__ = "0.1.0"

__all__ = [
    "Boundaries",
    "DecisionRegions",
    "Diagnostics",
    "Explanation",
    "Explanations",
    "GreedyResult",
    "Interpretation",
    "Model",
    "RepresentativeInterpreter",
    "cam",
    "covers",
    "explain",
    "load_model",
    "polytope_heatmap",
    "predict",
    "rank_covered",
    "ri_channel_weights",
    "sample_boundaries",
    "sample_indices",
    "semantic_distance",
    "side_bits",
    "solve",
]
