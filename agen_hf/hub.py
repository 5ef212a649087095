"""What every agen_hf model shares on top of ``PyTorchModelHubMixin``: model-card metadata,
strict loading, the image processor's ``preprocessor_config.json`` saved (and pushed) with the
weights, the backbone / new-layer split of the parameters that the learning rates follow, and
finding a file in a model folder or Hub repo."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from torch import nn


def split_parameters(model: nn.Module, pretrained: list[nn.Module]) -> dict[str, list]:
    """``"backbone"``: the parameters of the ``pretrained`` modules (ImageNet-initialised);
    ``"new"``: all others, in ``model.parameters()`` order."""
    ids = {id(p) for m in pretrained for p in m.parameters()}
    params = list(model.parameters())
    return {"backbone": [p for p in params if id(p) in ids],
            "new": [p for p in params if id(p) not in ids]}


class SegmentationHubMixin(
    PyTorchModelHubMixin,
    library_name="agen_hf",
    tags=["image-segmentation", "weakly-supervised-segmentation", "pascal-voc"],
    pipeline_tag="image-segmentation",
    license="mit",
    paper_url="https://doi.org/10.23919/cje.2021.00.230",
):
    """The model-card metadata every agen_hf model shares (a subclass adds its own tags and
    template); ``save_pretrained``/``push_to_hub`` also write ``preprocessor_config.json``
    (from the model config's ``image_mean``/``image_std``); ``from_pretrained`` is strict by
    default."""

    def _save_pretrained(self, save_directory) -> None:
        from .image_processing import AgenImageProcessor

        super()._save_pretrained(save_directory)
        AgenImageProcessor(image_mean=self.config.image_mean,
                           image_std=self.config.image_std).save_pretrained(save_directory)

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs):
        # The mixin loads non-strictly by default; a checkpoint that misses or adds weights is
        # an error here unless the caller passes strict=False.
        return super()._from_pretrained(strict=strict, **kwargs)


def find_file(name_or_path: str | os.PathLike, filename: str) -> str | None:
    """``filename`` in a local folder, or in a Hub repo (None when it has no such file)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / filename
        return str(path) if path.is_file() else None
    try:
        return hf_hub_download(str(name_or_path), filename)
    except EntryNotFoundError:
        return None
