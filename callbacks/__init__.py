"""Lightning callbacks of kp_lightning."""

from callbacks.save_pretrained import SaveBestPretrained

__all__ = ["SaveBestPretrained"]
