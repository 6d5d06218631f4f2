"""Lightning callbacks of kp_lightning."""

from callbacks.kprune import KPrune
from callbacks.save_pretrained import SaveBestPretrained

__all__ = ["KPrune", "SaveBestPretrained"]
