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

import itertools
import json
import sys
import tarfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from agen_hf import AgenImageProcessor
from agen_hf.arguments import ArgumentParser, flag
from agen_hf.atomic import save_image_atomic, write_text_atomic
from agen_hf.auto import load_segmentation_model
from agen_hf.engine import cpus_per_process, make_accelerator
from agen_hf.engine.arguments import (
    CrfArguments,
    DeviceArguments,
    ModelArguments,
    TestTimeAugmentation,
)
from agen_hf.engine.distributed import from_main, gather_objects, sum_over_processes
from agen_hf.engine.evaluation import merged
from agen_hf.engine.exits import crf_problems, end_run
from agen_hf.engine.logs import configure_logging
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


@dataclass
class PredictArguments:
    """The images to segment and what to write for each."""

    images: list[str] = flag(
        None, "image files and/or folders (their images, not recursive)", nargs="+", required=True
    )
    output_dir: str = flag(
        None,
        "output folder (masks/, overlays/, predict_report.json)",
        aliases=["--out"],
        required=True,
    )
    max_size: int = flag(1024, "long side the network sees at most (0: no limit)", type=int)
    no_overlays: bool = flag(False, "write the masks only")
    voc_layout: bool = flag(
        False,
        "also write results/VOC2012/Segmentation/comp6_test_cls/<id>.png and results.tar.gz "
        "for the VOC evaluation server",
    )
    skip_existing: bool = flag(
        False,
        "leave images whose outputs are all written already (the mask, and the overlay and "
        "the VOC-server copy when asked for): resume a long run",
    )


def build_parser() -> ArgumentParser:
    return ArgumentParser(
        ModelArguments,
        PredictArguments,
        TestTimeAugmentation,
        DeviceArguments,
        CrfArguments,
        description=__doc__.split("\n\n")[0],
    )


def parse_args(
    argv: list[str] | None = None,
) -> tuple[ModelArguments, PredictArguments, TestTimeAugmentation, DeviceArguments, CrfArguments]:
    return build_parser().parse(argv)


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
    accelerator,
    model_name: str,
    files: list[Path],
    predict: PredictArguments,
    tta: TestTimeAugmentation,
    crf,
    num_workers: int = 0,
) -> tuple[int, dict[str, str]]:
    """Segment this process's share of ``files`` with the model ``model_name`` into
    ``predict.output_dir``: the number written and the files that failed, each with its
    error."""
    model = load_segmentation_model(model_name).to(accelerator.device).eval()
    processor = AgenImageProcessor.from_pretrained(model_name, max_size=predict.max_size or None)
    mine = files[accelerator.process_index :: accelerator.num_processes]
    loader = DataLoader(
        ImageFiles(mine), batch_size=None, collate_fn=as_is, num_workers=num_workers
    )
    stream = SegmentationStream(
        model, processor, crf, accelerator.autocast, scales=tta.scales, flip=tta.flip
    )
    out = Path(predict.output_dir)
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
            write_outputs(out, path, rgb, labels, predict.voc_layout, not predict.no_overlays)
            written += 1
    return written, failures


def main(argv: list[str] | None = None) -> dict:
    model_args, predict, tta, device, crf_args = parse_args(argv)
    configure_logging()
    accelerator = make_accelerator(
        device.cpu, mixed_precision=device.mixed_precision, ddp_timeout=device.ddp_timeout
    )
    out = Path(predict.output_dir)
    files = find_images(predict.images)
    if not files:
        raise SystemExit(f"--images: no images found in {predict.images}")
    if predict.skip_existing:  # decided once, so that no image is missed or done twice
        files = from_main(
            still_to_do(files, out, predict.voc_layout, not predict.no_overlays)
            if accelerator.is_main_process
            else None,
            "the list of images still to do (--skip_existing)",
        )
    started = time.time()
    with crf_args.crf_pool(cpus_per_process()) as crf:
        written, failures = segment_files(
            accelerator,
            model_args.model_name_or_path,
            files,
            predict,
            tta,
            crf,
            num_workers=device.num_workers,
        )
        counts = torch.tensor([written, crf.workers_replaced if crf else 0])
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
        if predict.voc_layout:
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
