"""The model cards (``README.md``) that ``save_pretrained`` and ``push_to_hub`` write: Jinja
templates that :meth:`agen_hf.hub.SegmentationHubMixin.generate_model_card` fills with the
card metadata, the per-class IoU table (``metrics``) and how the model was trained
(``training``)."""

AGEN_CARD = """
---
{{ card_data }}
---

# AGEN: Attention Guided Enhancement Network

Weakly supervised semantic segmentation model trained from image-level labels only
(Zhang et al., *Attention Guided Enhancement Network for Weakly Supervised Semantic
Segmentation*, Chinese Journal of Electronics 2023, doi:10.23919/cje.2021.00.230),
packaged with the agen_hf library.

```python
from agen_hf import AgenModel

model = AgenModel.from_pretrained("{{ repo_id }}")
logits = model(pixel_values, segmentation_only=True).logits  # (B, {{ num_labels | default("num_labels", true) }}, H/{{ logit_stride | default(8, true) }}, W/{{ logit_stride | default(8, true) }})
```

## Evaluation

{{ metrics | default("No evaluation results recorded yet.", true) }}

## Training

{{ training | default("[More Information Needed]", true) }}
"""


DEEPLAB_CARD = """
---
{{ card_data }}
---

# Two-step AGEN: DeepLab trained on AGEN's pseudo labels

A fully supervised DeepLab trained on the segmentation of an AGEN model (Zhang et al.,
*Attention Guided Enhancement Network for Weakly Supervised Semantic Segmentation*, Chinese
Journal of Electronics 2023, Table 5), packaged with agen_hf. Image-level labels only.

```python
from agen_hf.deeplab import DeepLabModel

model = DeepLabModel.from_pretrained("{{ repo_id }}")
```

## Evaluation

{{ metrics | default("No evaluation results recorded yet.", true) }}

## Training

{{ training | default("[More Information Needed]", true) }}
"""
