"""What every model config shares (transformers' ``PretrainedConfig`` conventions on a
dataclass): a ``model_type`` saved in ``config.json`` so that loading picks the class without
guessing, ``to_dict``/``from_dict`` with unknown fields refused, JSON files, and
``from_pretrained``/``save_pretrained`` on a folder or a Hub repo."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .model_files import find_file

C = TypeVar("C", bound="SegmentationConfig")
CONFIG_NAME = "config.json"


class SegmentationConfig:
    """Mixed into each config dataclass, which sets :attr:`model_type` and validates itself
    in ``__post_init__``."""

    model_type: ClassVar[str] = ""

    @property
    def label_names(self) -> list[str]:
        """``id2label`` in label order, ``"background"`` first: ``label_names[1:]`` are the C
        classes, ``dict(zip(label_names, values))`` names a per-class list."""
        return [self.id2label[i] for i in range(len(self.id2label))]

    def to_dict(self) -> dict[str, Any]:
        """Every field (JSON types) and ``model_type``."""
        values = json.loads(json.dumps(dataclasses.asdict(self)))
        return {"model_type": self.model_type, **values}

    def run_dict(self) -> dict[str, Any]:
        """The config as a training run's fingerprint records it (:meth:`to_dict`; a config
        leaves out the fields it gained later while they are at the value older versions
        implied, so that runs recorded before them resume)."""
        values = self.to_dict()
        for name, implied in self.implied_by_older_versions.items():
            if name in values and values[name] == implied:
                values.pop(name)
        return values

    implied_by_older_versions: ClassVar[dict[str, Any]] = {}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_json_file(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json_string() + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """The config of ``values`` (a ``to_dict`` result, or a ``config.json`` without
        ``model_type`` from agen_hf <= 0.3); another model's, or an unknown field, is an
        error naming it."""
        values = dict(values)
        model_type = values.pop("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"model_type {model_type!r}: not a {cls.__name__} (model_type {cls.model_type!r})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_json_file(cls: type[C], path: str | os.PathLike) -> C:
        """The config saved in ``path``; errors name the file."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls: type[C], name_or_path: str | os.PathLike) -> C:
        """The ``config.json`` of a saved model folder (a ``checkpoint-<step>`` too) or of a
        Hub repo."""
        path = find_file(name_or_path, CONFIG_NAME)
        if path is None:
            raise FileNotFoundError(
                f"{name_or_path}: no {CONFIG_NAME}; expected a model saved with save_pretrained"
            )
        return cls.from_json_file(path)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``save_directory/config.json`` (the folder is created); returns its path."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.to_json_file(folder / CONFIG_NAME)
        return folder / CONFIG_NAME


def model_type_of(values: dict[str, Any]) -> str:
    """The ``model_type`` of a ``config.json``'s values; for one saved before model types
    existed (agen_hf <= 0.3), DeepLab's is known by its ``backbone`` field."""
    if "model_type" in values:
        return str(values["model_type"])
    return "deeplab" if "backbone" in values else "agen"
