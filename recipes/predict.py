#!/usr/bin/env python
"""Segment images with a trained AGEN: VOC-coloured palette PNG masks at each image's original
size, overlays, and optionally the layout the PASCAL VOC evaluation server takes.

    python recipes/predict.py --model runs/agen --images photos/ cat.jpg --out preds
    accelerate launch recipes/predict.py --model runs/agen \
        --images VOC2012/JPEGImages --scales 0.5 1 1.5 2 --flip --crf --voc_layout --out test

Any image mode (RGB, L, P, RGBA, CMYK, 16-bit, ...) and size works; images whose long side
exceeds --max_size are segmented at that size and the mask is brought back to the original
size. A file that cannot be read is reported (and listed in ``predict_report.json``) and the
others go on; the exit status is 3 (finished with problems) when any failed. Under
``accelerate launch`` each process takes its share of the files. ``predict_report.json`` also
holds the precision and the images per second.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from agen_hf import AgenImageProcessor
from agen_hf.atomic import save_image_atomic, write_text_atomic
from agen_hf.auto import load_segmentation_model
from agen_hf.engine import make_accelerator
from agen_hf.engine.arguments import HelpFormatter, configure_logging
from agen_hf.engine.distributed import from_main, gather_objects, sum_over_processes
from agen_hf.engine.evaluation import merged
from agen_hf.engine.exits import end_run
from agen_hf.engine.inference_arguments import (
    add_inference_arguments,
    add_model_argument,
    add_output_argument,
    crf_pool,
    crf_problems,
    workers_replaced,
)
from agen_hf.image_processing import rgb_array
from agen_hf.inference import SegmentationStream, as_is
from agen_hf.progress import progress
from agen_hf.visualization import label_image, overlay

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".jp2",
}
# comp6: "trained with data other than VOC" (ImageNet initialisation), what WSSS papers submit
VOC_RESULTS = Path("results") / "VOC2012" / "Segmentation" / "comp6_test_cls"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_model_argument(p)
    p.add_argument(
        "--images",
        required=True,
        nargs="+",
        help="image files and/or folders (their images, not recursive)",
    )
    add_output_argument(p, "output folder (masks/, overlays/, predict_report.json)")
    add_inference_arguments(p)
    p.add_argument(
        "--max_size",
        type=int,
        default=1024,
        help="long side the network sees at most (0: no limit)",
    )
    p.add_argument("--no_overlays", action="store_true", help="write the masks only")
    p.add_argument(
        "--voc_layout",
        action="store_true",
        help="also write results/VOC2012/Segmentation/comp6_test_cls/<id>.png and "
        "results.tar.gz for the VOC evaluation server",
    )
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="leave images whose outputs are all written already (the mask, and the overlay "
        "and the VOC-server copy when asked for): resume a long run",
    )
    return p


def find_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders' images sorted by name. Two inputs with the same file stem
    would overwrite each other's mask: that is an error naming them."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            files.append(path)  # a missing file is reported with the other failures
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen and seen[f.stem] != f:
            raise SystemExit(
                f"--images: {seen[f.stem]} and {f} would both be written as "
                f"{f.stem}.png; rename one or segment them in separate runs"
            )
        seen[f.stem] = f
    return list(dict.fromkeys(files))


class ImageFiles(Dataset):
    """Decodes each file to RGB in a loader worker; a failure becomes an ``error`` item."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path = self.files[i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img.load()
                    rgb = rgb_array(img, str(path))
        except FileNotFoundError:
            return {"path": path, "error": "file not found"}
        except (
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombWarning,
            Image.DecompressionBombError,
        ) as e:
            return {"path": path, "error": f"{type(e).__name__}: {e}"}
        return {"path": path, "rgb": rgb}


def output_paths(out: Path, path: Path, voc_layout: bool, overlays: bool) -> dict[str, Path]:
    """Every file written for the image at ``path``: its mask, and its VOC-server copy and
    overlay when asked for."""
    paths = {"mask": out / "masks" / f"{path.stem}.png"}
    if voc_layout:
        paths["voc"] = out / VOC_RESULTS / f"{path.stem}.png"
    if overlays:
        paths["overlay"] = out / "overlays" / f"{path.stem}.jpg"
    return paths


def still_to_do(files: list[Path], out: Path, voc_layout: bool, overlays: bool) -> list[Path]:
    """``files`` without those whose every output (:func:`output_paths`) exists: a run killed
    between an image's mask and its copies does that image again."""
    return [
        f
        for f in files
        if not all(p.is_file() for p in output_paths(out, f, voc_layout, overlays).values())
    ]


def write_outputs(
    out: Path, path: Path, rgb: np.ndarray, labels: np.ndarray, voc_layout: bool, overlays: bool
) -> None:
    """One image's palette mask (and its VOC-server copy and overlay), each written
    atomically, the mask first."""
    paths = output_paths(out, path, voc_layout, overlays)
    mask = label_image(labels)
    save_image_atomic(mask, paths["mask"])
    if voc_layout:
        save_image_atomic(mask, paths["voc"])
    if overlays:
        save_image_atomic(Image.fromarray(overlay(rgb, labels)), paths["overlay"], quality=90)


def segment_files(
    args: argparse.Namespace, accelerator, files: list[Path], out: Path, crf
) -> tuple[int, dict[str, str]]:
    """Segment this process's share of ``files`` into ``out``: the number written and the
    files that failed, each with its error."""
    model = load_segmentation_model(args.model_name_or_path).to(accelerator.device).eval()
    processor = AgenImageProcessor.from_pretrained(
        args.model_name_or_path, max_size=args.max_size or None
    )
    mine = files[accelerator.process_index :: accelerator.num_processes]
    loader = DataLoader(
        ImageFiles(mine), batch_size=None, collate_fn=as_is, num_workers=args.num_workers
    )
    stream = SegmentationStream(
        model, processor, crf, accelerator.autocast, scales=args.scales, flip=args.flip
    )
    failures: dict[str, str] = {}
    written = 0
    items = progress(
        loader, desc="predict", total=len(mine), main_process=accelerator.is_main_process
    )
    for item in itertools.chain(items, [None]):
        if item is not None and "error" in item:
            failures[str(item["path"])] = item["error"]
            print(f"FAILED {item['path']}: {item['error']}", file=sys.stderr)
            continue
        # the CRF pool returns finished images as they come; None: the last ones
        done = stream.finish() if item is None else stream.submit(item["rgb"], tag=item["path"])
        for path, rgb, labels in done:
            write_outputs(out, path, rgb, labels, args.voc_layout, not args.no_overlays)
            written += 1
    return written, failures


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    accelerator = make_accelerator(
        args.cpu, mixed_precision=args.mixed_precision, ddp_timeout=args.ddp_timeout
    )
    configure_logging(accelerator)
    out = Path(args.output_dir)
    files = find_images(args.images)
    if not files:
        raise SystemExit(f"--images: no images found in {args.images}")
    if args.skip_existing:  # decided once, so that no image is missed or done twice
        files = from_main(
            still_to_do(files, out, args.voc_layout, not args.no_overlays)
            if accelerator.is_main_process
            else None,
            "the list of images still to do (--skip_existing)",
        )
    started = time.time()
    with crf_pool(args) as crf:
        written, failures = segment_files(args, accelerator, files, out, crf)
        counts = torch.tensor([written, workers_replaced(crf)])
    seconds = time.time() - started
    written, replaced = sum_over_processes(
        accelerator, counts, "the counts of masks written and CRF workers replaced"
    ).tolist()
    report = {
        "written": written,
        "failed": merged(gather_objects(failures, "the list of failed images")),
        "mixed_precision": accelerator.mixed_precision,
        "seconds": seconds,  # segmenting and writing, the model loaded
        "images_per_second": written / seconds,
    }
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "predict_report.json", json.dumps(report, indent=2) + "\n")
        if args.voc_layout:
            with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
                tar.add(out / "results", arcname="results")
        print(
            f"{report['written']} masks written to {out / 'masks'}"
            + (
                f"; {len(report['failed'])} image(s) failed, listed in "
                f"{out / 'predict_report.json'}"
                if report["failed"]
                else ""
            )
        )
    failed = report["failed"]
    end_run(
        accelerator,
        crf_problems(replaced)
        + (
            [
                f"{len(failed)} image(s) failed and have no mask (listed in "
                f"{out / 'predict_report.json'}: {', '.join(list(failed)[:3])}"
                f"{', ...' if len(failed) > 3 else ''})"
            ]
            if failed
            else []
        ),
    )
    return report


if __name__ == "__main__":
    main()
