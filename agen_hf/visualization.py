"""Pictures of what AGEN sees: VOC-coloured masks, overlays, and the paper's figures.

* Fig. 4: class activation maps (eq. 2-3) of branch A and of every AGM-n, before and after
  its CoAM, one row per image, optionally between the ground truth and branch B's
  prediction (:func:`cam_figure`).
* Fig. 5: input / ground truth / prediction(s), one row per image (:func:`segmentation_figure`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from .atomic import save_image_atomic
from .cam import class_activation_maps
from .image_processing import AgenImageProcessor, rgb_array
from .inference import segmentation_probabilities
from .labels import voc_palette
from .modeling_agen import AgenModel

_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def label_image(labels: np.ndarray) -> Image.Image:
    """(H, W) class indices -> palette PNG image in VOC colours (what VOC's masks are; every
    index up to 254 has its own colour, so any class count works)."""
    img = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    return img


def label_colors(labels: np.ndarray) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) uint8 VOC colours."""
    return _PALETTE[np.asarray(labels, dtype=np.uint8)]


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with every non-background pixel blended with its class colour."""
    out = rgb.astype(np.float32)
    fg = (np.asarray(labels) != 0)[..., None]
    out = np.where(fg, (1 - alpha) * out + alpha * label_colors(labels), out)
    return np.round(out).astype(np.uint8)


def heatmap(cam: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 in the jet colour map (blue 0, red 1)."""
    v = np.clip(np.asarray(cam, dtype=np.float32), 0, 1)[..., None]
    channels = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)  # r, g, b
    return np.round(255 * channels).astype(np.uint8)


def grid(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    cell: tuple[int, int] = (160, 160),
    gap: int = 4,
) -> Image.Image:
    """Lay (H, W, 3) uint8 pictures out in a grid under a row of column titles; every
    picture is resized to ``cell`` (height, width)."""
    ch, cw = cell
    cols = len(titles)
    if any(len(r) != cols for r in rows):
        raise ValueError(f"grid: every row needs {cols} pictures, one per title")
    title_h = 16
    canvas = Image.new(
        "RGB", (cols * (cw + gap) + gap, title_h + len(rows) * (ch + gap) + gap), "white"
    )
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.text((gap + j * (cw + gap) + 2, 2), title, fill="black")
    for i, row in enumerate(rows):
        for j, picture in enumerate(row):
            tile = Image.fromarray(picture).resize((cw, ch), Image.Resampling.BILINEAR)
            canvas.paste(tile, (gap + j * (cw + gap), title_h + gap + i * (ch + gap)))
    return canvas


def _cam_overlay(rgb: np.ndarray, cam: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    return np.round((1 - alpha) * rgb + alpha * heatmap(cam.numpy())).astype(np.uint8)


@torch.no_grad()
def cam_figure(
    model,
    images: Sequence,
    labels: Sequence[Sequence[int]] | None = None,
    processor: AgenImageProcessor | None = None,
    cell=(160, 160),
    masks: Sequence | None = None,
    prediction: bool = False,
) -> Image.Image:
    """Fig. 4: per image, the input then the CAM (eq. 2-3, the maximum over the image's
    classes) of branch A and of AGM-5/4/3 before and after CoAM, overlaid on the image.

    labels: per image, the foreground classes (0-based among the C classes) to show; default:
    those branch A predicts present (``sigmoid > 0.5``, else its top class).
    masks: per image, its ground truth (H, W) (class indices: an array or a palette PIL
        image; None for an image without one), drawn in VOC colours after the input.
    prediction: add a last column, branch B's segmentation (the argmax of its upsampled
        logits, :func:`agen_hf.inference.segmentation_probabilities` at one scale), in VOC
        colours.
    """
    processor = processor or AgenImageProcessor(model.config.image_mean, model.config.image_std)
    device = next(model.parameters()).device
    rows, titles = [], ["input"]
    for k, image in enumerate(images):
        rgb = rgb_array(image)  # decoded once, for the network and for the picture
        pixel_values = processor.normalize(rgb)
        h, w = pixel_values.shape[-2:]
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h)))
        pv = processor.pad(pixel_values).to(device)
        out = model(pv)
        if labels is not None:
            classes = list(labels[k])
        else:
            p = out.class_logits["A"][0].sigmoid()
            classes = (p > 0.5).nonzero().flatten().tolist() or [int(p.argmax())]
        columns = [("A", out.class_maps["A"])]
        for n in sorted(model.config.agm_stages, reverse=True):
            name = f"agm{n}"
            if name in out.class_maps_before_coam:
                columns.append((f"AGM-{n}", out.class_maps_before_coam[name]))
                columns.append((f"AGM-{n}+CoAM", out.class_maps[name]))
            else:
                columns.append((f"AGM-{n}", out.class_maps[name]))
        row = [rgb]
        if masks is not None:
            row.append(label_colors(masks[k]) if masks[k] is not None else np.full_like(rgb, 255))
        for _, maps in columns:
            cams = class_activation_maps(maps.float(), pv.shape[-2:])[0, classes, :h, :w]
            row.append(_cam_overlay(rgb, cams.amax(dim=0).cpu()))
        if prediction:
            probs = segmentation_probabilities(model, pv, size_divisor=processor.size_divisor)
            probs = probs[0, :, :h, :w]
            row.append(label_colors(probs.argmax(dim=0).cpu().numpy()))
        rows.append(row)
        titles = (
            ["input"]
            + (["ground truth"] if masks is not None else [])
            + [t for t, _ in columns]
            + (["B prediction"] if prediction else [])
        )
    return grid(rows, titles, cell)


def segmentation_figure(
    images: Sequence,
    predictions: dict[str, Sequence[np.ndarray]],
    ground_truth: Sequence[np.ndarray | None] | None = None,
    cell=(160, 160),
) -> Image.Image:
    """Fig. 5: per image, the input, its ground truth (when given) and each named prediction
    (H, W) in VOC colours."""
    titles = ["input"] + (["ground truth"] if ground_truth is not None else []) + list(predictions)
    rows = []
    for i, image in enumerate(images):
        rgb = rgb_array(image)
        row = [rgb]
        if ground_truth is not None:
            gt = ground_truth[i]
            row.append(label_colors(gt) if gt is not None else np.full_like(rgb, 255))
        row += [label_colors(p[i]) for p in predictions.values()]
        rows.append(row)
    return grid(rows, titles, cell)


def write_cam_figure(model_dir: str | Path, val_ds, n: int) -> Path:
    """``model_dir/cams.png``: for the first ``n`` rows of ``val_ds`` (VOC schema), the
    input, its ground truth, the CAMs of branch A and of every AGM before/after CoAM (for its
    classes) and branch B's prediction (:func:`cam_figure`), written atomically."""
    model = AgenModel.from_pretrained(model_dir).eval()
    rows = val_ds.select(range(min(n, len(val_ds))))
    figure = cam_figure(model, rows["image"], rows["labels"], masks=rows["mask"], prediction=True)
    path = Path(model_dir) / "cams.png"
    save_image_atomic(figure, path)
    return path
