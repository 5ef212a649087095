"""agen_hf: AGEN (Attention Guided Enhancement Network) for weakly supervised semantic
segmentation, the Hugging Face way."""

from .agm import AttentionGuidedModule
from .coam import ContextAttention
from .configuration_agen import AgenConfig
from .image_processing import AgenImageProcessor, BatchFeature
from .inference import segment, segmentation_probabilities
from .labels import VOC_CLASSES
from .modeling_agen import AgenModel
from .modeling_outputs import AgenOutput, SegmenterOutput

__version__ = "0.2.0"

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
