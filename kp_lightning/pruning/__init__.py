"""Retraining-free structured pruning: K-prune and the Kwon et al. baseline (plain torch, no Lightning)."""

from .kprune import KPruneConfig, kprune
from .kwon import KwonConfig, kwon_prune
from .result import PruneError, PruneResult

__all__ = ["KPruneConfig", "KwonConfig", "PruneError", "PruneResult", "kprune", "kwon_prune"]
