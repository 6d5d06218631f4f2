"""kp_lightning: compress pretrained transformer encoders (K-prune, CoFi, Prune Once for All)."""

from .compact_model.registration import register_compact_models
from .core.adapter import EncoderAdapter, EncoderShape, UnsupportedModelError
from .core.compaction import compact, original_structure
from .core.export import ExportError, export_compact, export_dense, fold_masks_dense, load_compressed
from .core.flops import encoder_flops, head_flops, measured_flops, model_flops, neuron_flops
from .core.latency import measure_latency
from .core.mask_hooks import MaskHandle, attach_masks
from .core.masks import StructuralMasks
from .core.report import compression_report, parameter_counts
from .core.structure import EncoderStructure, StructureError

__version__ = "0.1.0"

register_compact_models()

__all__ = [
    "EncoderAdapter",
    "EncoderShape",
    "EncoderStructure",
    "ExportError",
    "MaskHandle",
    "StructuralMasks",
    "StructureError",
    "UnsupportedModelError",
    "attach_masks",
    "compact",
    "compression_report",
    "encoder_flops",
    "export_compact",
    "export_dense",
    "fold_masks_dense",
    "head_flops",
    "load_compressed",
    "measure_latency",
    "measured_flops",
    "model_flops",
    "neuron_flops",
    "original_structure",
    "parameter_counts",
]
