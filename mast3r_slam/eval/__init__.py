"""Evaluation: ATE after Umeyama alignment (:mod:`.ate`) and results tables (:mod:`.table`).

``compute_ate`` and ``associate`` are imported lazily (the table tool does not need torch).
"""

__all__ = ["associate", "compute_ate"]


def __getattr__(name):
    if name in __all__:
        from . import ate

        return getattr(ate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
