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
from accelerate.utils import gather_object
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from agen_hf import AgenImageProcessor
from agen_hf.atomic import save_image_atomic, write_text_atomic
from agen_hf.auto import load_segmentation_model
from agen_hf.engine import make_accelerator
from agen_hf.engine.arguments import HelpFormatter, configure_logging
from agen_hf.engine.exits import exit_if_incomplete
from agen_hf.engine.inference_arguments import (
    add_inference_arguments,
    add_model_argument,
    add_output_argument,
    crf_pool,
    crf_problems,
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
        help="leave images whose mask is already written (resume a long run)",
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


def write_outputs(
    out: Path, path: Path, rgb: np.ndarray, labels: np.ndarray, voc_layout: bool, overlays: bool
) -> None:
    """One image's palette mask (and its VOC-server copy and overlay), each written
    atomically."""
    mask = label_image(labels)
    save_image_atomic(mask, out / "masks" / f"{path.stem}.png")
    if voc_layout:
        save_image_atomic(mask, out / VOC_RESULTS / f"{path.stem}.png")
    if overlays:
        save_image_atomic(
            Image.fromarray(overlay(rgb, labels)), out / "overlays" / f"{path.stem}.jpg", quality=90
        )


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
    accelerator = make_accelerator(args.cpu, mixed_precision=args.mixed_precision)
    configure_logging(accelerator)
    out = Path(args.output_dir)
    files = find_images(args.images)
    if not files:
        raise SystemExit(f"--images: no images found in {args.images}")
    if args.skip_existing:
        files = [f for f in files if not (out / "masks" / f"{f.stem}.png").is_file()]
    started = time.time()
    with crf_pool(args) as crf:
        written, failures = segment_files(args, accelerator, files, out, crf)
    seconds = time.time() - started

    counts = gather_object([written])
    all_failures = gather_object([failures])
    report = {
        "written": int(sum(counts)),
        "failed": {k: v for d in all_failures for k, v in d.items()},
        "mixed_precision": accelerator.mixed_precision,
        "seconds": seconds,  # segmenting and writing, the model loaded
        "images_per_second": int(sum(counts)) / seconds,
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
    if accelerator.is_main_process:
        failed = report["failed"]
        exit_if_incomplete(
            crf_problems(crf)
            + (
                [
                    f"{len(failed)} image(s) failed and have no mask (listed in "
                    f"{out / 'predict_report.json'}: {', '.join(list(failed)[:3])}"
                    f"{', ...' if len(failed) > 3 else ''})"
                ]
                if failed
                else []
            )
        )
    return report


if __name__ == "__main__":
    main()
