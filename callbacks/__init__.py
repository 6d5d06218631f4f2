"""Lightning callbacks of kp_lightning."""

from callbacks.cofi import CoFi
from callbacks.kprune import KPrune
from callbacks.save_pretrained import SaveBestPretrained

__all__ = ["CoFi", "KPrune", "SaveBestPretrained"]
