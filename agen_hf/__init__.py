"""agen_hf: AGEN (Attention Guided Enhancement Network) for weakly supervised semantic
segmentation, the Hugging Face way."""

from .configuration_agen import VOC_CLASSES, AgenConfig
from .image_processing import AgenImageProcessor, BatchFeature
from .inference import segment, segmentation_probabilities
from .modeling_agen import AgenModel
from .modeling_outputs import AgenOutput, SegmenterOutput
from .modules import AttentionGuidedModule, ContextAttention

__version__ = "0.1.0"

__all__ = [
    "AgenConfig",
    "AgenImageProcessor",
    "AgenModel",
    "AgenOutput",
    "AttentionGuidedModule",
    "BatchFeature",
    "ContextAttention",
    "SegmenterOutput",
    "VOC_CLASSES",
    "__version__",
    "segment",
    "segmentation_probabilities",
]
