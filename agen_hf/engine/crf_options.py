"""The dense-CRF post-processing flags that eval_voc.py, predict.py and make_pseudo_labels.py
share, and the pool they describe."""

from __future__ import annotations

import argparse
import dataclasses

from ..crf import CrfParams, CrfPool
from .accelerator import cpus_per_process
from .arguments import above, non_negative


def add_crf_arguments(p: argparse.ArgumentParser) -> None:
    """``--crf``, ``--crf_processes`` and one ``--crf_<name>`` per :class:`CrfParams` field."""
    p.add_argument("--crf", action="store_true",
                   help="dense-CRF post-processing at full resolution over the predicted "
                        "classes (needs pydensecrf2)")
    p.add_argument("--crf_processes", type=non_negative, default=None,
                   help="CRF worker processes per process (0: inline; default: the cores of "
                        "the machine shared among its processes)")
    p.add_argument("--crf_timeout", type=above(0), default=600.0,
                   help="seconds one image's CRF may take in a worker before the workers are "
                        "replaced and it is tried again (a second time: the run stops)")
    for f in dataclasses.fields(CrfParams):
        p.add_argument(f"--crf_{f.name}", type=type(f.default), default=f.default,
                       help="see agen_hf.crf.CrfParams")


def crf_params(args: argparse.Namespace) -> CrfParams:
    return CrfParams(*(getattr(args, f"crf_{f.name}") for f in dataclasses.fields(CrfParams)))


def crf_pool(args: argparse.Namespace) -> CrfPool | None:
    """The pool ``--crf`` asks for (the caller closes it), or None without ``--crf``."""
    if not args.crf:
        return None
    processes = cpus_per_process() if args.crf_processes is None else args.crf_processes
    return CrfPool(crf_params(args), processes, timeout=args.crf_timeout)


def crf_problems(pool: CrfPool | None) -> list[str]:
    """What went wrong in ``pool`` though every result came back (workers replaced), for
    :func:`agen_hf.engine.exits.exit_if_incomplete`."""
    if pool is None or not pool.workers_replaced:
        return []
    return [f"CRF workers died or got stuck and were replaced {pool.workers_replaced} time(s); "
            "every image was refined (the warnings say which were resubmitted)"]
