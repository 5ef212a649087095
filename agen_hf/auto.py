"""Load whichever segmentation model a folder or Hub id holds: AGEN, or a DeepLab trained on
AGEN's pseudo labels (two-step AGEN). The recipes that only segment take either."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .configuration_utils import model_type_of
from .model_files import find_file


def load_segmentation_model(name_or_path: str | os.PathLike):
    """:class:`agen_hf.AgenModel` or :class:`agen_hf.deeplab.DeepLabModel`, by the
    ``model_type`` of its config.json (:func:`agen_hf.configuration_utils.model_type_of`)."""
    from .deeplab import DeepLabModel
    from .modeling_agen import AgenModel

    path = find_file(name_or_path, "config.json")
    if path is None:
        raise FileNotFoundError(
            f"{name_or_path}: no config.json; expected a model saved with save_pretrained"
        )
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read it as JSON ({e})") from None
    classes = {"agen": AgenModel, "deeplab": DeepLabModel}
    model_type = model_type_of(config)
    if model_type not in classes:
        raise ValueError(f"{path}: model_type {model_type!r} is not one of {sorted(classes)}")
    return classes[model_type].from_pretrained(name_or_path)
