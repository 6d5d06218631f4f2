"""Sentence-embedding models: pooling, sentence-transformers folders, embedding-distillation losses."""

from kp_lightning.embedding.pooling import Pooling, model_pooling, pool, set_model_pooling

__all__ = ["Pooling", "model_pooling", "pool", "set_model_pooling"]
