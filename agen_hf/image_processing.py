"""AgenImageProcessor: images of any mode and size in, class maps at the original size out.

Pre-processing turns an image into 8-bit RGB (every PIL mode, 16-bit included), shrinks it
when its long side exceeds ``max_size``, normalises it with the ImageNet statistics and pads
it bottom/right to a multiple of the output stride (8) so that the logits' grid is aligned with
the pixels. Post-processing upsamples class probabilities to the original size and takes the
argmax, class by class so that a 4000 x 3000 image never needs all 21 full-size maps at once.
Multi-scale + flip test-time augmentation averages the softmax probabilities of every
(scale, flip) pass at the input's size, as the WSSS literature evaluates (PSA, RRM).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .hub import find_file

PREPROCESSOR_CONFIG = "preprocessor_config.json"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def rgb_array(image, name: str = "image") -> np.ndarray:
    """Any image as (H, W, 3) uint8 RGB.

    PIL images of every mode (RGB, L, P, 1, RGBA/LA/PA with the alpha dropped, CMYK, YCbCr,
    16-bit ``I;16*`` and 32-bit ``I`` scaled by 1/257, float ``F`` in [0, 1]); numpy arrays
    (H, W), (H, W, 1|3|4) of uint8, uint16 (scaled by 1/257) or float in [0, 1]; torch tensors
    (3, H, W) or (H, W) of the same dtypes. Anything else is a ``ValueError`` naming ``name``.
    """
    if isinstance(image, Image.Image):
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
        raise ValueError(f"{name}: expected (H, W), (H, W, 3) or (H, W, 4) pixels, got shape "
                         f"{array.shape}")
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
    raise ValueError(f"{name}: unsupported pixel type {array.dtype}; expected uint8, uint16 or "
                     "float in [0, 1]")


def upsample_argmax(probs: torch.Tensor, size: tuple[int, int],
                    max_elements: int = 1 << 25) -> torch.Tensor:
    """``argmax_k bilinear(probs, size)[k]`` for probs (K, h, w), computed a few classes at a
    time (at most ``max_elements`` full-size values alive): equal to upsampling all K maps at
    once, ties going to the lower class index. Returns (H, W) int64."""
    k = probs.shape[0]
    chunk = max(1, min(k, max_elements // max(1, size[0] * size[1])))
    best = labels = None
    for start in range(0, k, chunk):
        part = F.interpolate(probs[None, start:start + chunk].float(), size=size,
                             mode="bilinear", align_corners=False)[0]
        value, index = part.max(dim=0)
        if best is None:
            best, labels = value, index
        else:
            better = value > best
            best = torch.where(better, value, best)
            labels = torch.where(better, index + start, labels)
    return labels


@dataclass
class AgenImageProcessor:
    """Pre- and post-processing for :class:`agen_hf.AgenModel`.

    Attributes:
        image_mean / image_std: normalisation (ImageNet's, as the backbones were trained).
        max_size: an image whose long side exceeds it is shrunk to it before the network (the
            result still comes back at the original size); None: never.
        size_divisor: pad bottom/right to a multiple of it (the output stride, 8).
        scales: test-time scales; the paper-style evaluation uses (0.5, 1.0, 1.5, 2.0).
        flip: also run every scale horizontally flipped.
    """

    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD
    max_size: int | None = 1024
    size_divisor: int = 8
    scales: Sequence[float] = field(default=(1.0,))
    flip: bool = False

    def __post_init__(self) -> None:
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"scales: need one or more positive scales, got {self.scales}")
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
        ``image_mean``/``image_std`` of its ``config.json``, else the defaults."""
        values: dict = {}
        for filename in (PREPROCESSOR_CONFIG, "config.json"):
            path = find_file(name_or_path, filename)
            if path is None:
                continue
            try:
                data = json.loads(Path(path).read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: cannot read it as JSON ({e})") from None
            keys = {f for f in cls.__dataclass_fields__} if filename == PREPROCESSOR_CONFIG \
                else {"image_mean", "image_std"}
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
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                              antialias=True)[0]
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (x - mean) / std

    def unnormalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) -> RGB in 0..255 (float), the inverse of :meth:`normalize`."""
        mean = torch.tensor(self.image_mean, device=pixel_values.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=pixel_values.device).view(1, 3, 1, 1)
        return (pixel_values * std + mean) * 255.0

    def pad(self, pixel_values: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Stack (3, h, w) images, zero-padded (the mean colour) bottom/right to the largest
        size rounded up to ``size_divisor``."""
        items = [pixel_values] if torch.is_tensor(pixel_values) and pixel_values.ndim == 3 \
            else list(pixel_values)
        d = self.size_divisor
        h = -(-max(t.shape[-2] for t in items) // d) * d
        w = -(-max(t.shape[-1] for t in items) // d) * d
        return torch.stack([F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2])) for t in items])

    def preprocess(self, images) -> dict:
        """One image or a list -> ``pixel_values`` (B, 3, H, W), ``input_sizes`` (the real
        (h, w) inside the padding) and ``original_sizes`` (each image's (H, W))."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        rgbs = [rgb_array(im, f"image {i}") for i, im in enumerate(images)]
        tensors = [self.normalize(rgb) for rgb in rgbs]
        return {"pixel_values": self.pad(tensors),
                "input_sizes": [tuple(t.shape[-2:]) for t in tensors],
                "original_sizes": [rgb.shape[:2] for rgb in rgbs]}

    __call__ = preprocess

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def predict_probabilities(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (B, C+1, H, W) at the size of ``pixel_values``, averaged
        over ``scales`` x (identity, horizontal flip if ``flip``). Each pass is padded to
        ``size_divisor``, its logits upsampled to the padded size and cropped."""
        b, _, h, w = pixel_values.shape
        total = None
        for scale in self.scales:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x = pixel_values if size == (h, w) else F.interpolate(
                pixel_values, size=size, mode="bilinear", align_corners=False)
            if self.flip:
                x = torch.cat([x, x.flip(-1)])
            padded = self.pad(list(x))
            logits = model(padded, segmentation_only=True).logits.float()
            logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear",
                                   align_corners=False)[..., :size[0], :size[1]]
            probs = logits.softmax(dim=1)
            if self.flip:
                probs = probs[:b] + probs[b:].flip(-1)
            if size != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            total = probs if total is None else total + probs
        return total / (len(self.scales) * (2 if self.flip else 1))

    def post_process_semantic_segmentation(self, probs: torch.Tensor,
                                           input_sizes: Sequence[tuple[int, int]],
                                           original_sizes: Sequence[tuple[int, int]]
                                           ) -> list[torch.Tensor]:
        """Probabilities or logits (B, K, H, W) of a padded batch -> one (H_i, W_i) int64 class
        map per image at its original size."""
        return [upsample_argmax(p[:, :h, :w], tuple(size))
                for p, (h, w), size in zip(probs, input_sizes, original_sizes)]

    def segment(self, model, images):
        """Class-index maps (H, W) uint8 at each image's original size: one image in, one map
        out; a list in, a list out. Images go through the network one at a time."""
        single = not isinstance(images, (list, tuple))
        device = next(model.parameters()).device
        out = []
        for image in [images] if single else images:
            inputs = self.preprocess(image)
            probs = self.predict_probabilities(model, inputs["pixel_values"].to(device))
            labels = self.post_process_semantic_segmentation(
                probs.cpu(), inputs["input_sizes"], inputs["original_sizes"])[0]
            out.append(labels.to(torch.uint8).numpy())
        return out[0] if single else out

