"""LightningDataModules: GLUE and custom classification files, SQuAD, MLM text corpora."""

from kp_lightning.datamodules.base import EncoderDataModule
from kp_lightning.datamodules.classification import GlueDataModule, TextClassificationDataModule

__all__ = ["EncoderDataModule", "GlueDataModule", "TextClassificationDataModule"]
