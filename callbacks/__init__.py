"""Lightning callbacks of kp_lightning."""

from callbacks.cofi import CoFi
from callbacks.gradual_pruning import GradualMagnitudePruning
from callbacks.kprune import KPrune
from callbacks.pattern_lock import PatternLock
from callbacks.quantization import QuantizationAwareTraining
from callbacks.save_pretrained import SaveBestPretrained

__all__ = [
    "CoFi",
    "GradualMagnitudePruning",
    "KPrune",
    "PatternLock",
    "QuantizationAwareTraining",
    "SaveBestPretrained",
]
