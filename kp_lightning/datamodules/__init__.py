"""LightningDataModules: GLUE and custom classification files, SQuAD, MLM text corpora."""

from kp_lightning.datamodules.base import EncoderDataModule
from kp_lightning.datamodules.classification import GlueDataModule, TextClassificationDataModule
from kp_lightning.datamodules.masked_lm import MLMDataModule
from kp_lightning.datamodules.squad import SquadDataModule

__all__ = ["EncoderDataModule", "GlueDataModule", "MLMDataModule", "SquadDataModule", "TextClassificationDataModule"]
