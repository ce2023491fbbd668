"""Evaluation: ATE after Umeyama alignment (:mod:`.ate`) and results tables (:mod:`.table`)."""
from .ate import associate, compute_ate

__all__ = ["associate", "compute_ate"]
