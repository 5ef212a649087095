import numpy as np
import torch
from PIL import Image

from agen_hf import AgenConfig, AgenModel
from agen_hf.data import voc_palette
from agen_hf.visualization import (
    cam_figure,
    grid,
    heatmap,
    label_colors,
    label_image,
    overlay,
    segmentation_figure,
)


def test_label_image_is_a_voc_palette_png_that_round_trips(tmp_path):
    labels = np.array([[0, 1, 15], [20, 255, 3]], np.uint8)
    label_image(labels).save(tmp_path / "m.png")
    img = Image.open(tmp_path / "m.png")
    assert img.mode == "P" and img.getpalette()[:63] == voc_palette()[:63]
    assert np.array_equal(np.array(img), labels)
    assert img.convert("RGB").getpixel((1, 0)) == (128, 0, 0)  # aeroplane
    assert img.convert("RGB").getpixel((2, 0)) == (192, 128, 128)  # person


def test_overlay_blends_foreground_only_and_heatmap_runs_blue_to_red():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    labels = np.array([[0, 1], [0, 0]])
    out = overlay(rgb, labels, alpha=0.5)
    assert (out[0, 0] == 100).all() and out[0, 1].tolist() == [114, 50, 50]  # (100+128)/2
    assert heatmap(np.array([[0.0, 0.5, 1.0]]))[0].tolist() == [
        [0, 0, 128],
        [128, 255, 128],
        [128, 0, 0],
    ]


def test_grid_layout():
    pictures = [[np.zeros((5, 7, 3), np.uint8)] * 3] * 2
    img = grid(pictures, ["a", "b", "c"], cell=(20, 30), gap=4)
    assert img.size == (3 * 34 + 4, 16 + 2 * 24 + 4)


def test_figures_have_one_column_per_head_and_one_row_per_image():
    model = AgenModel(AgenConfig.tiny()).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    fig4 = cam_figure(model, images, labels=[[0], [3, 4]], cell=(32, 32))
    # input, A, AGM-5/4/3 each before and after CoAM
    assert fig4.size == (8 * 36 + 4, 16 + 2 * 36 + 4)
    no_coam = AgenModel(AgenConfig.tiny(coam_stages=(4,))).eval()
    assert cam_figure(no_coam, images[:1], cell=(32, 32)).size == (6 * 36 + 4, 16 + 36 + 4)
    preds = {"AGEN": [np.zeros((40, 56), np.uint8)] * 2}
    fig5 = segmentation_figure(images, preds, [np.ones((40, 56), np.uint8), None], cell=(32, 32))
    assert fig5.size == (3 * 36 + 4, 16 + 2 * 36 + 4)
    # the ground-truth cell of the first image is aeroplane red
    assert fig5.getpixel((4 + 36 + 10, 16 + 4 + 10)) == (128, 0, 0)
    with torch.no_grad():
        assert segmentation_figure(images, preds, cell=(32, 32)).size[0] == 2 * 36 + 4


def test_cam_figure_with_ground_truth_and_branch_b_prediction():
    model = AgenModel(AgenConfig.tiny()).eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]
    masks = [label_image(np.full((40, 56), 1, np.uint8)), np.zeros((40, 56), np.uint8), None]
    fig = cam_figure(
        model, images, labels=[[0], [3], [4]], cell=(32, 32), masks=masks, prediction=True
    )
    # input, ground truth, A, AGM-5/4/3 each before and after CoAM, B's prediction
    assert fig.size == (10 * 36 + 4, 16 + 3 * 36 + 4)
    gt = (4 + 36 + 10, 16 + 4 + 10)  # inside the first row's ground-truth cell
    assert fig.getpixel(gt) == (128, 0, 0)  # aeroplane
    assert fig.getpixel((gt[0], gt[1] + 2 * 36)) == (255, 255, 255)  # no mask: blank
    # branch B's prediction: the VOC colour of the argmax of its logits (a fresh model's
    # logits start near 0, so check against the model's own argmax)
    from agen_hf import AgenImageProcessor

    processor = AgenImageProcessor()
    pv = processor.pad(processor.normalize(np.array(images[0])))
    with torch.no_grad():
        logits = model(pv, segmentation_only=True).logits
    upsampled = torch.nn.functional.interpolate(
        logits, size=pv.shape[-2:], mode="bilinear", align_corners=False
    )[0, :, :40, :56]
    pred = upsampled.argmax(dim=0).numpy()
    cell = np.asarray(fig)[16 + 4 : 16 + 4 + 32, 4 + 9 * 36 : 4 + 9 * 36 + 32]
    expected = np.asarray(
        Image.fromarray(label_colors(pred)).resize((32, 32), Image.Resampling.BILINEAR)
    )
    assert np.array_equal(cell, expected)


def test_palette_gives_81_classes_distinct_colours():
    """COCO's background + 80 classes (and any count up to 254) each get their own colour."""
    from agen_hf.visualization import label_colors

    colours = label_colors(np.arange(81, dtype=np.uint8)[None])[0]
    assert len({tuple(c) for c in colours}) == 81
    assert tuple(colours[0]) == (0, 0, 0) and tuple(colours[15]) == (192, 128, 128)  # VOC's
