"""The flags the inference recipes share (eval_voc.py, predict.py, make_pseudo_labels.py,
visualize.py), in the training recipes' vocabulary: the model (``--model_name_or_path``, alias
``--model``), the output folder (``--output_dir``, alias ``--out``), test-time augmentation,
precision and device, image-decoding workers, and the dense CRF with the pool it describes."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses

from ..crf import CrfParams, CrfPool
from .accelerator import PRECISIONS, cpus_per_process
from .arguments import above, add_ddp_timeout_argument, non_negative


def add_model_argument(p: argparse.ArgumentParser) -> None:
    """``--model_name_or_path`` (alias ``--model``): the trained model to run."""
    p.add_argument(
        "--model_name_or_path",
        "--model",
        dest="model_name_or_path",
        required=True,
        help="a saved model folder (a checkpoint-<step> too) or a Hub model id",
    )


def add_output_argument(p: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """``--output_dir`` (alias ``--out``): the folder a recipe writes into."""
    p.add_argument(
        "--output_dir",
        "--out",
        dest="output_dir",
        default=default,
        required=default is None,
        help=help,
    )


def add_inference_arguments(
    p: argparse.ArgumentParser, device: bool = True, crf: bool = True
) -> None:
    """``--scales`` and ``--flip`` (test-time augmentation); with ``device``,
    ``--mixed_precision``, ``--cpu``, ``--ddp_timeout`` and ``--num_workers``; with ``crf``,
    the CRF flags (:func:`add_crf_arguments`)."""
    p.add_argument(
        "--scales",
        type=above(0),
        nargs="+",
        default=[1.0],
        help="test-time scales (the literature's: 0.5 1 1.5 2)",
    )
    p.add_argument("--flip", action="store_true", help="add horizontally flipped passes")
    if device:
        p.add_argument(
            "--mixed_precision",
            choices=PRECISIONS,
            default=None,
            help="bf16/fp16 autocast, no, or auto (bf16 where native, else fp32)",
        )
        p.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
        add_ddp_timeout_argument(p)
        p.add_argument(
            "--num_workers", type=non_negative, default=2, help="image-decoding loader workers"
        )
    if crf:
        add_crf_arguments(p)


def add_crf_arguments(p: argparse.ArgumentParser) -> None:
    """``--crf``, ``--crf_processes`` and one ``--crf_<name>`` per :class:`CrfParams` field."""
    p.add_argument(
        "--crf",
        action="store_true",
        help="dense-CRF post-processing at full resolution over the predicted "
        "classes (needs pydensecrf2)",
    )
    p.add_argument(
        "--crf_processes",
        type=non_negative,
        default=None,
        help="CRF worker processes per process (0: inline; default: the cores of "
        "the machine shared among its processes)",
    )
    p.add_argument(
        "--crf_timeout",
        type=above(0),
        default=600.0,
        help="seconds one image's CRF may take in a worker before the workers are "
        "replaced and it is tried again (a second time: the run stops)",
    )
    for f in dataclasses.fields(CrfParams):
        p.add_argument(
            f"--crf_{f.name}",
            type=type(f.default),
            default=f.default,
            help="see agen_hf.crf.CrfParams",
        )


def crf_params(args: argparse.Namespace) -> CrfParams:
    return CrfParams(*(getattr(args, f"crf_{f.name}") for f in dataclasses.fields(CrfParams)))


def crf_pool(args: argparse.Namespace) -> CrfPool | contextlib.nullcontext:
    """The pool ``--crf`` asks for, to use as ``with crf_pool(args) as crf:`` (the pool closes
    on leaving; ``crf`` is None without ``--crf``)."""
    if not args.crf:
        return contextlib.nullcontext()
    processes = cpus_per_process() if args.crf_processes is None else args.crf_processes
    return CrfPool(crf_params(args), processes, timeout=args.crf_timeout)


def crf_problems(workers_replaced: int) -> list[str]:
    """The problem line, for :func:`agen_hf.engine.exits.end_run`, when CRF workers died or got
    stuck and were replaced ``workers_replaced`` times (summed over the processes) though every
    result came back."""
    if not workers_replaced:
        return []
    return [
        f"CRF workers died or got stuck and were replaced {workers_replaced} time(s); "
        "every image was refined (the warnings say which were resubmitted)"
    ]


def workers_replaced(pool: CrfPool | None) -> int:
    """How many times ``pool`` (None without ``--crf``) replaced its workers."""
    return 0 if pool is None else pool.workers_replaced
