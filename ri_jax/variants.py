"""The two RI variants, and the knobs they differ in (§4.1–4.2 vs the authors' code).

* ``"authors"`` (the default; the authors' public code, the ``dnn_invariant`` family:
  ``RuleMinerLargeCandiPool.CandidatePoolLabel`` and ``SubmodularMinerAG.mineInvariant``):
  each input x draws its own pool of |Q| references from D(x), and each boundary is Eq. 2 at
  the point of G's decision boundary found by a line search between ψ(x) and ψ(r)
  (``boundaries.search_boundary_point``); δ = 0; where δ cannot be reached, their greedy's
  extras (``solver.solve(keep_adding=True)``); the loosen step after Algorithm 1
  (``solver.solve(loosen=True)``). It gives each input its own polytope.
* ``"paper"`` (the paper's text): one sample Q of boundaries at random references, shared
  by every input (Eq. 2 at ψ(r)); δ = τ(x); the greedy stops where no boundary removes
  another D(x) reference; no loosen step. Most inputs of a class then get the same few
  polytopes.

The knobs mix freely (``ri_variant("paper", loosen=True)``); ``RIVariant.name`` says
``"custom"`` for a mix that is neither preset.
"""

from __future__ import annotations

import dataclasses

from ri_jax.boundaries import DEFAULT_MAX_SEARCH_STEPS, SEARCH_TOLERANCE

SAMPLINGS = ("shared", "per_input")
DELTA_RULES = ("tau", "zero")


@dataclasses.dataclass(frozen=True)
class RIVariant:
    """How RI samples boundaries and solves (frozen; saved with the results it made).

    The field defaults are the paper's text; the default variant is the authors'
    (``ri_variant()``, ``DEFAULT_VARIANT``).

    Attributes:
      sampling: ``"shared"``: one Q at sampled references for every input (paper);
        ``"per_input"``: each input's own pool on the decision boundary (authors).
      delta: ``"tau"``: δ = τ(x) (paper); ``"zero"``: δ = 0 (authors).
      keep_adding: where δ is not reached once no boundary removes another D(x)
        reference, keep adding those that remove nothing, in index order, up to the
        authors' 111 picks (``solver.solve(keep_adding=True)``; authors). False stops there.
      loosen: run the authors' loosen step after Algorithm 1.
      max_search_steps: cap on each boundary search (``"per_input"`` only).
      search_tol: the search stops when ΔG² < search_tol (the authors' 1e-5).
    """

    sampling: str = "shared"
    delta: str = "tau"
    keep_adding: bool = False
    loosen: bool = False
    max_search_steps: int = DEFAULT_MAX_SEARCH_STEPS
    search_tol: float = SEARCH_TOLERANCE

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling: expected one of {SAMPLINGS}, got {self.sampling!r}")
        if self.delta not in DELTA_RULES:
            raise ValueError(f"delta: expected one of {DELTA_RULES}, got {self.delta!r}")
        for name in ("keep_adding", "loosen"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if not isinstance(self.max_search_steps, int) or self.max_search_steps < 1:
            raise ValueError(f"max_search_steps: must be an integer >= 1, got "
                             f"{self.max_search_steps!r}")
        if not self.search_tol > 0:
            raise ValueError(f"search_tol: must be > 0, got {self.search_tol!r}")

    @property
    def name(self) -> str:
        """``"paper"``, ``"authors"``, or ``"custom"`` for any other mix of the knobs."""
        for name, preset in PRESETS.items():
            if self == preset:
                return name
        return "custom"

    def to_json(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


PRESETS = {
    "paper": RIVariant(),
    "authors": RIVariant(sampling="per_input", delta="zero", keep_adding=True, loosen=True),
}
DEFAULT_VARIANT = "authors"
VARIANT_NAMES = tuple(PRESETS)


def ri_variant(variant: str | RIVariant = DEFAULT_VARIANT, **overrides) -> RIVariant:
    """A preset by name (``"authors"``, the default, or ``"paper"``), with any knob overridden.

    Args:
      variant: a preset name or an ``RIVariant``.
      **overrides: fields of ``RIVariant`` to change.

    Returns:
      ``RIVariant``.
    """
    if isinstance(variant, RIVariant):
        base = variant
    elif variant in PRESETS:
        base = PRESETS[variant]
    else:
        raise ValueError(f"variant: expected one of {VARIANT_NAMES} or an RIVariant, got "
                         f"{variant!r}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(RIVariant)}
    if unknown:
        raise ValueError(f"variant: unknown option(s) {sorted(unknown)}")
    return dataclasses.replace(base, **overrides)
