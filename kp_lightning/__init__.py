"""kp_lightning: compress pretrained transformer encoders (K-prune, CoFi, Prune Once for All)."""

from .compact_model.registration import register_compact_models

__version__ = "0.1.0"

register_compact_models()
