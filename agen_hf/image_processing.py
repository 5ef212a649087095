"""AgenImageProcessor: the transformers image-processor contract for :class:`agen_hf.AgenModel`.

``processor(images, return_tensors="pt")`` turns one image or a list into a
:class:`BatchFeature` holding ``pixel_values`` (B, 3, H, W), so that ``model(**inputs)`` runs:
every image becomes 8-bit RGB (every PIL mode, 16-bit included, turned upright by its EXIF
orientation), is shrunk when its long side exceeds ``max_size``, normalised with the ImageNet
statistics and padded bottom/right with zeros to a multiple of the output stride (8) so that the
logits' grid is aligned with the pixels.
``processor.post_process_semantic_segmentation(outputs, target_sizes)`` brings the scores back
to each image's original size and takes the argmax, class by class so that a 4000 x 3000 image
never needs all C + 1 full-size maps at once. Running the model (multi-scale + flip test-time
augmentation, the dense CRF) is :mod:`agen_hf.inference`'s job.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.nn import functional as F

from .model_files import find_file
from .normalization import IMAGENET_MEAN, IMAGENET_STD, normalize, unnormalize

PREPROCESSOR_CONFIG = "preprocessor_config.json"
_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
RETURN_TENSORS = ("pt", "np")


def rgb_array(image, name: str = "image") -> np.ndarray:
    """Any image as (H, W, 3) uint8 RGB.

    PIL images are turned upright by their EXIF orientation (as ``datasets.Image`` does;
    files without one, e.g. VOC's, are unchanged), in every mode (RGB, L, P, 1, RGBA/LA/PA
    with the alpha dropped, CMYK, YCbCr, 16-bit ``I;16*`` and 32-bit ``I`` scaled by 1/257,
    float ``F`` in [0, 1]); numpy arrays (H, W), (H, W, 1|3|4) of uint8, uint16 (scaled by
    1/257) or float in [0, 1]; torch tensors (3, H, W) or (H, W) of the same dtypes. Anything
    else is a ``ValueError`` naming ``name``.
    """
    if isinstance(image, Image.Image):
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:  # a photo taken sideways
            image = ImageOps.exif_transpose(image)
        if image.mode in _SIXTEEN_BIT_MODES:
            array = np.asarray(image, dtype=np.int64)
            if array.min() < 0 or array.max() > 65535:
                raise ValueError(f"{name}: 32-bit image values outside 0..65535")
            return rgb_array(array.astype(np.uint16), name)
        if image.mode == "F":
            return rgb_array(np.asarray(image, dtype=np.float32), name)
        try:
            return np.array(image.convert("RGB"))
        except (ValueError, OSError) as e:
            raise ValueError(f"{name}: cannot convert mode {image.mode!r} to RGB ({e})") from None
    if torch.is_tensor(image):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(
            f"{name}: expected (H, W), (H, W, 3) or (H, W, 4) pixels, got shape {array.shape}"
        )
    array = array[:, :, :3]
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name}: empty image of shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name}: float pixels must lie in [0, 1]")
        return np.round(array * 255).astype(np.uint8)
    raise ValueError(
        f"{name}: unsupported pixel type {array.dtype}; expected uint8, uint16 or float in [0, 1]"
    )


def upsample_argmax(
    probs: torch.Tensor, size: tuple[int, int], max_elements: int = 1 << 25
) -> torch.Tensor:
    """``argmax_k bilinear(probs, size)[k]`` for probs (K, h, w), computed a few classes at a
    time (at most ``max_elements`` full-size values alive): equal to upsampling all K maps at
    once, ties going to the lower class index. Returns (H, W) int64."""
    k = probs.shape[0]
    chunk = max(1, min(k, max_elements // max(1, size[0] * size[1])))
    best = labels = None
    for start in range(0, k, chunk):
        part = F.interpolate(
            probs[None, start : start + chunk].float(),
            size=size,
            mode="bilinear",
            align_corners=False,
        )[0]
        value, index = part.max(dim=0)
        if best is None:
            best, labels = value, index
        else:
            better = value > best
            best = torch.where(better, value, best)
            labels = torch.where(better, index + start, labels)
    return labels


class BatchFeature(dict):
    """What the processor returns, as transformers' ``BatchFeature``: a dict (so that
    ``model(**inputs)`` works) whose keys are also attributes (``inputs.pixel_values``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no {name!r}; it holds {sorted(self)}"
            ) from None

    def to(self, device_or_dtype: str | int | torch.device | torch.dtype) -> "BatchFeature":
        """A new BatchFeature with every tensor moved to a device, or with its floating-point
        tensors cast to a dtype (integer tensors keep theirs, as in transformers); other
        values (numpy arrays) are kept as they are."""
        if isinstance(device_or_dtype, torch.dtype):
            return BatchFeature(
                {
                    k: v.to(device_or_dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                    for k, v in self.items()
                }
            )
        device = torch.device(device_or_dtype)
        return BatchFeature({k: v.to(device) if torch.is_tensor(v) else v for k, v in self.items()})


def padded_size(sizes: Sequence[tuple[int, int]], divisor: int) -> tuple[int, int]:
    """The batch size of :meth:`AgenImageProcessor.pad`: the largest height and width of
    ``sizes``, each rounded up to a multiple of ``divisor``."""
    return (
        -(-max(h for h, _ in sizes) // divisor) * divisor,
        -(-max(w for _, w in sizes) // divisor) * divisor,
    )


def pad_to_multiple(pixel_values: list[torch.Tensor] | torch.Tensor, divisor: int) -> torch.Tensor:
    """Stack (3, h, w) images (one, a list, or a (B, 3, h, w) batch), zero-padded (the mean
    colour after normalisation) bottom/right to the largest size rounded up to ``divisor``."""
    items = (
        [pixel_values]
        if torch.is_tensor(pixel_values) and pixel_values.ndim == 3
        else list(pixel_values)
    )
    h, w = padded_size([tuple(t.shape[-2:]) for t in items], divisor)
    return torch.stack([F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2])) for t in items])


def _scores_of(outputs) -> tuple[torch.Tensor, bool]:
    """(scores (B, K, h, w), whether they are a model output's logits)."""
    if torch.is_tensor(outputs):
        scores, logits = outputs, False
    else:
        scores, logits = getattr(outputs, "logits", None), True
        if not torch.is_tensor(scores):
            raise ValueError(
                "outputs: expected a model output with .logits or a tensor of "
                f"scores, got {type(outputs).__name__}"
            )
    if scores.ndim != 4:
        raise ValueError(f"outputs: expected scores (B, K, h, w), got {tuple(scores.shape)}")
    return scores, logits


@dataclass
class AgenImageProcessor:
    """Pre- and post-processing for :class:`agen_hf.AgenModel`, as a transformers image
    processor: ``inputs = processor(images, return_tensors="pt")``, ``outputs =
    model(**inputs)``, ``processor.post_process_semantic_segmentation(outputs, target_sizes)``.

    Attributes:
        image_mean / image_std: normalisation (ImageNet's, as the backbones were trained).
        max_size: an image whose long side exceeds it is shrunk to it before the network (the
            result still comes back at the original size); None: never.
        size_divisor: pad bottom/right to a multiple of it (the output stride, 8).
    """

    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD
    max_size: int | None = 1024
    size_divisor: int = 8

    def __post_init__(self) -> None:
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        if self.max_size is not None and self.max_size < 1:
            raise ValueError(f"max_size: must be positive or None, got {self.max_size}")
        if self.size_divisor < 1:
            raise ValueError(f"size_divisor: must be >= 1, got {self.size_divisor}")

    # -- serialisation (preprocessor_config.json, next to the model's config.json) --------
    def to_dict(self) -> dict:
        return {"image_processor_type": type(self).__name__, **asdict(self)}

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        path = Path(save_directory) / PREPROCESSOR_CONFIG
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **overrides) -> "AgenImageProcessor":
        """From a model folder or Hub id: its ``preprocessor_config.json``, else the
        ``image_mean``/``image_std`` of its ``config.json``, else the defaults. Keys that are
        not attributes (``image_processor_type``; ``scales``/``flip`` of older files) are
        ignored."""
        values: dict = {}
        for filename in (PREPROCESSOR_CONFIG, "config.json"):
            path = find_file(name_or_path, filename)
            if path is None:
                continue
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: cannot read it as JSON ({e})") from None
            keys = (
                {f for f in cls.__dataclass_fields__}
                if filename == PREPROCESSOR_CONFIG
                else {"image_mean", "image_std"}
            )
            values = {k: v for k, v in data.items() if k in keys}
            break
        return cls(**{**values, **overrides})

    # -- pre-processing --------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the network sees: the original, or shrunk to ``max_size`` (long side)."""
        if self.max_size is None or max(height, width) <= self.max_size:
            return height, width
        factor = self.max_size / max(height, width)
        return max(1, round(height * factor)), max(1, round(width * factor))

    def normalize(self, rgb: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, h, w) float, shrunk to ``max_size`` and normalised."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255)
        size = self.resized_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(
                x[None], size=size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        return normalize(x, self.image_mean, self.image_std)

    def unnormalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> RGB in 0..255 (float), the inverse of :meth:`normalize`."""
        return unnormalize(pixel_values, self.image_mean, self.image_std)

    def pad(self, pixel_values: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """:func:`pad_to_multiple` of ``size_divisor``."""
        return pad_to_multiple(pixel_values, self.size_divisor)

    def preprocess(self, images, return_tensors: str = "pt") -> BatchFeature:
        """One image or a list (anything :func:`rgb_array` takes) -> a :class:`BatchFeature`
        whose one key is ``pixel_values`` (B, 3, H, W) float32: a torch tensor for
        ``return_tensors="pt"``, a numpy array for ``"np"``."""
        if return_tensors not in RETURN_TENSORS:
            raise ValueError(
                f"return_tensors: expected one of {RETURN_TENSORS}, got {return_tensors!r}"
            )
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("images: expected one image or a non-empty list")
        pixel_values = self.pad(
            [self.normalize(rgb_array(im, f"image {i}")) for i, im in enumerate(images)]
        )
        return BatchFeature(
            pixel_values=pixel_values if return_tensors == "pt" else pixel_values.numpy()
        )

    def __call__(self, images, return_tensors: str = "pt") -> BatchFeature:
        """Same as :meth:`preprocess`."""
        return self.preprocess(images, return_tensors=return_tensors)

    # -- post-processing -------------------------------------------------------------------
    def post_process_semantic_segmentation(
        self, outputs, target_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """Class maps (int64), one per image, from a model output (its ``.logits``) or a
        tensor of scores (logits or probabilities) (B, K, h, w) of a batch this processor made.

        With ``target_sizes`` (each image's original (H, W), e.g. ``image.size[::-1]`` of the
        upright image): the scores are upsampled (bilinear) to the padded batch size, cropped
        to each image's content (:meth:`resized_size`) and argmaxed at (H, W) with
        :func:`upsample_argmax`. A model output's logits are turned into probabilities
        (softmax) at the padded size first, so the result is what
        :func:`agen_hf.inference.segment` gives at one scale; a tensor is interpolated as it
        is (pass :func:`agen_hf.inference.segmentation_probabilities` for test-time
        augmentation). Without: the argmax of the scores at their own resolution.
        """
        scores, logits = _scores_of(outputs)
        if target_sizes is None:
            return [s.argmax(dim=0) for s in scores]
        originals = [(int(h), int(w)) for h, w in target_sizes]
        if len(originals) != scores.shape[0]:
            raise ValueError(
                f"target_sizes: {len(originals)} sizes for a batch of "
                f"{scores.shape[0]} images; give one (H, W) per image"
            )
        contents = [self.resized_size(h, w) for h, w in originals]
        padded = padded_size(contents, self.size_divisor)
        labels = []
        for i, ((h, w), original) in enumerate(zip(contents, originals)):
            s = scores[i : i + 1].float()
            if tuple(s.shape[-2:]) != padded:
                s = F.interpolate(s, size=padded, mode="bilinear", align_corners=False)
            if logits:
                s = s.softmax(dim=1)
            labels.append(upsample_argmax(s[0, :, :h, :w], original))
        return labels
