"""agen_hf: AGEN (Attention Guided Enhancement Network) for weakly supervised semantic
segmentation, the Hugging Face way."""

from .configuration_agen import VOC_CLASSES, AgenConfig
from .image_processing import AgenImageProcessor
from .modeling_agen import AgenModel, AgenOutput
from .modules import AttentionGuidedModule, ContextAttention

__version__ = "0.1.0"

__all__ = ["AgenConfig", "AgenImageProcessor", "AgenModel", "AgenOutput", "AttentionGuidedModule", "ContextAttention",
           "VOC_CLASSES", "__version__"]
