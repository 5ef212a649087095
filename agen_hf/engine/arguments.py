"""The flags the recipes share, as typed dataclasses (:mod:`agen_hf.arguments`):
:class:`TrainingArguments` (the paper's schedule by default: section IV.1), and for the
inference recipes :class:`ModelArguments`, :class:`TestTimeAugmentation`,
:class:`DeviceArguments` and :class:`CrfArguments`."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from ..arguments import above, at_least, flag, non_negative, positive
from ..crf import CrfParams, CrfPool
from .distributed import DDP_TIMEOUT
from .optimizer import OPTIMIZERS
from .precision import PRECISIONS
from .schedule import SCHEDULES

TRACKERS = [t.value for t in LoggerType]  # what --report_to passes to Accelerate

MIXED_PRECISION_HELP = (
    "bf16/fp16 autocast, no (fp32), or auto: bf16 on a GPU with bf16, a CPU with AMX, or a "
    "CPU with AVX512-BF16 whose bf16 matrix products measure >= 1.3x fp32; fp32 elsewhere "
    "(the choice is logged)"
)
DDP_TIMEOUT_HELP = (
    "seconds a collective between the processes (an all-reduce, a barrier) waits for the "
    "others before the run stops with an error naming it (transformers' ddp_timeout); "
    "waiting for one process's own work (first indexing, a save, the Hub push) is not limited"
)


def checkpoint_limit(text: str) -> int | None:
    """``--checkpoints_total_limit``: a count >= 1, or ``none`` to keep every checkpoint."""
    if text.lower() == "none":
        return None
    return at_least(1)(text)


def checkpoint_every(text: str) -> int:
    """``--checkpointing_steps``: a count of optimizer steps >= 0, or ``epoch`` (the same as
    0: only at the end of each epoch, as transformers' scripts spell it)."""
    return 0 if text.lower() == "epoch" else non_negative(text)


LOADING, OPTIMISATION, OUTPUT = "data loading", "optimisation", "checkpoints, evaluation, logging"


@dataclass
class TrainingArguments:
    """How a training recipe loads data, optimises, checkpoints, evaluates and logs; the
    defaults are the paper's (section IV.1). Fields marked ``run`` define the run (its
    checkpoints' fingerprint); ``crop_size`` and ``scale_range`` left unset are filled in by
    the recipe for its data."""

    crop_size: int | None = flag(
        None,
        "training crop (paper: 321; synthetic: its image size)",
        type=positive,
        group=LOADING,
        run=True,
    )
    scale_range: list[int] | None = flag(
        None,
        "long-side range of the random rescale (paper: 321 481)",
        type=positive,
        nargs=2,
        group=LOADING,
        run=True,
    )
    skip_bad_samples: bool = flag(False, group=LOADING)
    num_workers: int = flag(2, type=non_negative, group=LOADING)
    hold_decoded: bool = flag(
        False,
        "keep each training image decoded in memory after its first epoch (3 H W + H W bytes "
        "an image, in every loader worker): the same batches, later epochs without reading "
        "or decoding",
        group=LOADING,
    )

    per_device_train_batch_size: int = flag(15, type=positive, group=OPTIMISATION, run=True)
    per_device_eval_batch_size: int = flag(1, type=positive, group=OPTIMISATION)
    learning_rate: float = flag(
        1e-3, "backbone learning rate", type=at_least(0.0, float), group=OPTIMISATION, run=True
    )
    head_lr_multiplier: float = flag(
        10.0,
        "AGMs and new heads train at this multiple of --learning_rate",
        type=at_least(0.0, float),
        group=OPTIMISATION,
        run=True,
    )
    optimizer: str = flag(
        "sgd",
        "sgd (the paper's, with --momentum) or adamw (for models trained from scratch, e.g. "
        "on the synthetic data)",
        choices=OPTIMIZERS,
        group=OPTIMISATION,
        run=True,
    )
    momentum: float = flag(0.9, type=at_least(0.0, float, 1.0), group=OPTIMISATION, run=True)
    weight_decay: float = flag(5e-4, type=at_least(0.0, float), group=OPTIMISATION, run=True)
    num_train_epochs: int = flag(35, type=positive, group=OPTIMISATION)
    max_train_steps: int | None = flag(
        None, "overrides --num_train_epochs", type=positive, group=OPTIMISATION
    )
    lr_decay_epochs: int = flag(
        10,
        "with --lr_scheduler step: divide the lr by 10 every N epochs",
        type=positive,
        group=OPTIMISATION,
        run=True,
    )
    lr_scheduler: str = flag(
        "step",
        "step (the paper's), poly or cosine (for models trained from scratch)",
        choices=SCHEDULES,
        group=OPTIMISATION,
        run=True,
    )
    warmup_steps: int = flag(
        0,
        "linear learning-rate warm-up over the first N optimizer steps",
        type=non_negative,
        group=OPTIMISATION,
        run=True,
    )
    lr_restart_at: int = flag(
        0,
        "poly/cosine: restart the schedule (warm-up included) at step N, e.g. where a "
        "classification-first phase ends (0: one cycle)",
        type=non_negative,
        group=OPTIMISATION,
        run=True,
    )
    max_grad_norm: float | None = flag(
        None,
        "clip the global gradient norm (the paper does not clip)",
        type=at_least(0.0, float),
        group=OPTIMISATION,
        run=True,
    )
    gradient_accumulation_steps: int = flag(1, type=positive, group=OPTIMISATION, run=True)
    mixed_precision: str | None = flag(
        None, MIXED_PRECISION_HELP, choices=PRECISIONS, group=OPTIMISATION
    )
    sync_bn: bool = flag(False, "SyncBatchNorm across GPUs", group=OPTIMISATION)
    cpu: bool = flag(False, "train on the CPU even if a GPU is there", group=OPTIMISATION)
    ddp_timeout: int = flag(DDP_TIMEOUT, DDP_TIMEOUT_HELP, type=positive, group=OPTIMISATION)
    compile: bool = flag(False, "torch.compile the model", group=OPTIMISATION)
    channels_last: bool = flag(
        False,
        "weights and training images in channels-last (NHWC) memory order: faster "
        "convolutions on CPUs (oneDNN) and tensor-core GPUs; the same numbers up to float "
        "rounding",
        group=OPTIMISATION,
    )
    seed: int = flag(42, type=int, group=OPTIMISATION, run=True)
    deterministic: bool = flag(
        False,
        "deterministic kernels: bit-identical reruns and resumes",
        group=OPTIMISATION,
        run=True,
    )
    max_nonfinite_steps: int = flag(
        5,
        "abort after this many NaN/inf losses in a row (each one is skipped)",
        type=positive,
        group=OPTIMISATION,
    )

    output_dir: str = flag("runs/agen", group=OUTPUT)
    checkpointing_steps: int = flag(
        0,
        "checkpoint every N optimizer steps (0 or epoch: only at the end of each epoch)",
        type=checkpoint_every,
        group=OUTPUT,
    )
    checkpoints_total_limit: int | None = flag(
        3, "checkpoints kept (the newest); none: every one", type=checkpoint_limit, group=OUTPUT
    )
    resume_from_checkpoint: str | None = flag(
        None,
        "auto (resume from the newest complete checkpoint in --output_dir, or start fresh "
        "when it has none: one command for the first start and every requeue), latest (the "
        "same, an error when there is none) or a checkpoint folder",
        group=OUTPUT,
    )
    overwrite_output_dir: bool = flag(
        False,
        "start fresh in an --output_dir that holds another run's checkpoints, deleting them "
        "(or, resuming an older checkpoint, the newer ones)",
        group=OUTPUT,
    )
    allow_schedule_change: bool = flag(
        False,
        "resume with another --max_train_steps / --num_train_epochs (logged); any other "
        "change of what defines the run stays an error",
        group=OUTPUT,
    )
    eval_every_epochs: int = flag(1, "0: only at the end", type=non_negative, group=OUTPUT)
    logging_steps: int = flag(10, type=positive, group=OUTPUT)
    with_tracking: bool = flag(False, group=OUTPUT)
    report_to: str = flag(
        "tensorboard",
        "with --with_tracking: the tracker Accelerate logs to (all: every installed one; "
        "none: no tracking, --with_tracking or not)",
        choices=[*TRACKERS, "none"],
        group=OUTPUT,
    )
    push_to_hub: bool = flag(False, group=OUTPUT)
    hub_model_id: str | None = flag(None, group=OUTPUT)
    hub_token: str | None = flag(None, group=OUTPUT)

    def __post_init__(self) -> None:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if self.report_to == "none":
            self.with_tracking = False

    def check_trackers(self) -> None:
        """Fail at start, saying what to install, when ``--with_tracking`` would log
        nowhere."""
        if not self.with_tracking:
            return
        available = [t.value for t in get_available_trackers()]
        if self.report_to == "all" and not available:
            raise SystemExit(
                "--with_tracking --report_to all: no tracker is installed; "
                "pip install tensorboard (or agen_hf[tracking]), or wandb"
            )
        if self.report_to != "all" and self.report_to not in available:
            package = (
                "tensorboard (or agen_hf[tracking])"
                if self.report_to == "tensorboard"
                else self.report_to.replace("_", "-")
            )
            raise SystemExit(
                f"--with_tracking --report_to {self.report_to}: {self.report_to} is not "
                f"installed; pip install {package}"
            )


@dataclass
class ModelArguments:
    """The trained model an inference recipe runs."""

    group: ClassVar[str | None] = None
    model_name_or_path: str = flag(
        None,
        "a saved model folder (a checkpoint-<step> too) or a Hub model id",
        aliases=["--model"],
        required=True,
    )


@dataclass
class TestTimeAugmentation:
    """Multi-scale and flipped passes averaged at inference."""

    group: ClassVar[str | None] = None
    scales: list[float] = flag(
        [1.0], "test-time scales (the literature's: 0.5 1 1.5 2)", type=above(0), nargs="+"
    )
    flip: bool = flag(False, "add horizontally flipped passes")


@dataclass
class DeviceArguments:
    """Where and how an inference recipe computes."""

    group: ClassVar[str | None] = None
    mixed_precision: str | None = flag(
        None, "bf16/fp16 autocast, no, or auto (bf16 where native, else fp32)", choices=PRECISIONS
    )
    cpu: bool = flag(False, "run on the CPU even with a GPU")
    ddp_timeout: int = flag(DDP_TIMEOUT, DDP_TIMEOUT_HELP, type=positive)
    num_workers: int = flag(2, "image-decoding loader workers", type=non_negative)


def _crf_fields() -> list[tuple]:
    """``--crf``, ``--crf_processes``, ``--crf_timeout`` and one ``--crf_<name>`` per
    :class:`~agen_hf.crf.CrfParams` field (its default, its type)."""
    fields = [
        (
            "crf",
            bool,
            flag(
                False,
                "dense-CRF post-processing at full resolution over the predicted classes "
                "(needs pydensecrf2)",
            ),
        ),
        (
            "crf_processes",
            "int | None",
            flag(
                None,
                "CRF worker processes per process (0: inline; default: the cores of the machine "
                "shared among its processes)",
                type=non_negative,
            ),
        ),
        (
            "crf_timeout",
            float,
            flag(
                600.0,
                "seconds one image's CRF may take in a worker before the workers are replaced "
                "and it is tried again (a second time: the run stops)",
                type=above(0),
            ),
        ),
    ]
    for f in dataclasses.fields(CrfParams):
        fields.append(
            (
                f"crf_{f.name}",
                type(f.default),
                flag(f.default, "see agen_hf.crf.CrfParams", type=type(f.default)),
            )
        )
    return fields


class _CrfMethods:
    group: ClassVar[str | None] = None

    def crf_params(self) -> CrfParams:
        """The CRF's parameters from the ``--crf_<name>`` flags."""
        return CrfParams(*(getattr(self, f"crf_{f.name}") for f in dataclasses.fields(CrfParams)))

    def crf_pool(self, processes_default: int) -> CrfPool | contextlib.nullcontext:
        """The pool ``--crf`` asks for, to use as ``with arguments.crf_pool(n) as crf:`` (the
        pool closes on leaving; ``crf`` is None without ``--crf``); ``--crf_processes``
        defaults to ``processes_default``."""
        if not self.crf:
            return contextlib.nullcontext()
        processes = processes_default if self.crf_processes is None else self.crf_processes
        return CrfPool(self.crf_params(), processes, timeout=self.crf_timeout)


CrfArguments = dataclasses.make_dataclass("CrfArguments", _crf_fields(), bases=(_CrfMethods,))
CrfArguments.__doc__ = "Dense-CRF post-processing and the worker pool it runs in."
