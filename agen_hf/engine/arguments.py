"""The flags every training recipe shares (the paper's schedule by default), ``--config``
files checked like the command line, and the Accelerator they configure."""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import yaml
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import DistributedDataParallelKwargs, LoggerType

from .accelerator import PRECISIONS, make_accelerator
from .distributed import DDP_TIMEOUT
from .schedule import SCHEDULES

TRACKERS = [t.value for t in LoggerType]  # what --report_to passes to Accelerate


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every flag's default, except where there is none to show (None) or the
    help already says what it defaults to."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def at_least(low: float, kind: type = int, high: float | None = None):
    """An argparse ``type``: a ``kind`` number >= ``low`` (and < ``high``), refused otherwise
    with the flag's name (on the command line and in ``--config`` files alike)."""

    def parse(text: str):
        value = kind(text)  # a ValueError: argparse's "invalid int value: '1.5'"
        if value < low or (high is not None and value >= high) or value != value:
            bound = f">= {low}" + (f" and < {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def checkpoint_limit(text: str) -> int | None:
    """``--checkpoints_total_limit``: a count >= 1, or ``none`` to keep every checkpoint."""
    if text.lower() == "none":
        return None
    return at_least(1)(text)


def checkpoint_every(text: str) -> int:
    """``--checkpointing_steps``: a count of optimizer steps >= 0, or ``epoch`` (the same as
    0: only at the end of each epoch, as transformers' scripts spell it)."""
    return 0 if text.lower() == "epoch" else non_negative(text)


def above(low: float):
    """An argparse ``type``: a float > ``low`` (a time limit, a rate), refused otherwise."""

    def parse(text: str) -> float:
        value = float(text)
        if not value > low:  # NaN too
            raise argparse.ArgumentTypeError(f"must be > {low}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


positive = at_least(1)
non_negative = at_least(0)


def add_ddp_timeout_argument(p) -> None:
    """``--ddp_timeout``: the seconds a collective may wait for the other processes
    (:mod:`agen_hf.engine.distributed`), in every recipe that runs under N processes."""
    p.add_argument(
        "--ddp_timeout",
        type=positive,
        default=DDP_TIMEOUT,
        help="seconds a collective between the processes (an all-reduce, a barrier) waits "
        "for the others before the run stops with an error naming it (transformers' "
        "ddp_timeout); waiting for one process's own work (first indexing, a save, the "
        "Hub push) is not limited",
    )


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The data-loading, optimisation, checkpoint, evaluation, logging and Hub flags (paper
    defaults; a recipe resolves ``--crop_size``/``--scale_range`` left unset)."""
    g = p.add_argument_group("data loading")
    g.add_argument(
        "--crop_size",
        type=positive,
        default=None,
        help="training crop (paper: 321; synthetic: its image size)",
    )
    g.add_argument(
        "--scale_range",
        type=positive,
        nargs=2,
        default=None,
        help="long-side range of the random rescale (paper: 321 481)",
    )
    g.add_argument("--skip_bad_samples", action="store_true")
    g.add_argument("--num_workers", type=non_negative, default=2)
    g = p.add_argument_group("optimisation")
    g.add_argument("--per_device_train_batch_size", type=positive, default=15)
    g.add_argument("--per_device_eval_batch_size", type=positive, default=1)
    g.add_argument(
        "--learning_rate", type=at_least(0.0, float), default=1e-3, help="backbone learning rate"
    )
    g.add_argument(
        "--head_lr_multiplier",
        type=at_least(0.0, float),
        default=10.0,
        help="AGMs and new heads train at this multiple of --learning_rate",
    )
    g.add_argument(
        "--optimizer",
        choices=["sgd", "adamw"],
        default="sgd",
        help="sgd (the paper's, with --momentum) or adamw (for models trained from "
        "scratch, e.g. on the synthetic data)",
    )
    g.add_argument("--momentum", type=at_least(0.0, float, 1.0), default=0.9)
    g.add_argument("--weight_decay", type=at_least(0.0, float), default=5e-4)
    g.add_argument("--num_train_epochs", type=positive, default=35)
    g.add_argument(
        "--max_train_steps", type=positive, default=None, help="overrides --num_train_epochs"
    )
    g.add_argument(
        "--lr_decay_epochs",
        type=positive,
        default=10,
        help="with --lr_scheduler step: divide the lr by 10 every N epochs",
    )
    g.add_argument(
        "--lr_scheduler",
        choices=SCHEDULES,
        default="step",
        help="step (the paper's), poly or cosine (for models trained from scratch)",
    )
    g.add_argument(
        "--warmup_steps",
        type=non_negative,
        default=0,
        help="linear learning-rate warm-up over the first N optimizer steps",
    )
    g.add_argument(
        "--lr_restart_at",
        type=non_negative,
        default=0,
        help="poly/cosine: restart the schedule (warm-up included) at step N, e.g. "
        "where a classification-first phase ends (0: one cycle)",
    )
    g.add_argument(
        "--max_grad_norm",
        type=at_least(0.0, float),
        default=None,
        help="clip the global gradient norm (the paper does not clip)",
    )
    g.add_argument("--gradient_accumulation_steps", type=positive, default=1)
    g.add_argument(
        "--mixed_precision",
        choices=PRECISIONS,
        default=None,
        help="bf16/fp16 autocast, no (fp32), or auto: bf16 on a GPU with bf16, "
        "a CPU with AMX, or a CPU with AVX512-BF16 whose bf16 matrix "
        "products measure >= 1.3x fp32; fp32 elsewhere (the choice is logged)",
    )
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across GPUs")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is there")
    add_ddp_timeout_argument(g)
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument(
        "--channels_last",
        action="store_true",
        help="weights and training images in channels-last (NHWC) memory order: "
        "faster convolutions on CPUs (oneDNN) and tensor-core GPUs; the same "
        "numbers up to float rounding",
    )
    g.add_argument("--seed", type=int, default=42)
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels: bit-identical reruns and resumes",
    )
    g.add_argument(
        "--max_nonfinite_steps",
        type=positive,
        default=5,
        help="abort after this many NaN/inf losses in a row (each one is skipped)",
    )
    g = p.add_argument_group("checkpoints, evaluation, logging")
    g.add_argument("--output_dir", default="runs/agen")
    g.add_argument(
        "--checkpointing_steps",
        type=checkpoint_every,
        default=0,
        help="checkpoint every N optimizer steps (0 or epoch: only at the end of each epoch)",
    )
    g.add_argument(
        "--checkpoints_total_limit",
        type=checkpoint_limit,
        default=3,
        help="checkpoints kept (the newest); none: every one",
    )
    g.add_argument(
        "--resume_from_checkpoint",
        help="auto (resume from the newest complete checkpoint in --output_dir, or "
        "start fresh when it has none: one command for the first start and "
        "every requeue), latest (the same, an error when there is none) or a "
        "checkpoint folder",
    )
    g.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start fresh in an --output_dir that holds another run's checkpoints, "
        "deleting them (or, resuming an older checkpoint, the newer ones)",
    )
    g.add_argument(
        "--allow_schedule_change",
        action="store_true",
        help="resume with another --max_train_steps / --num_train_epochs (logged); "
        "any other change of what defines the run stays an error",
    )
    g.add_argument("--eval_every_epochs", type=non_negative, default=1, help="0: only at the end")
    g.add_argument("--logging_steps", type=positive, default=10)
    g.add_argument("--with_tracking", action="store_true")
    g.add_argument(
        "--report_to",
        default="tensorboard",
        choices=[*TRACKERS, "none"],
        help="with --with_tracking: the tracker Accelerate logs to (all: every "
        "installed one; none: no tracking, --with_tracking or not)",
    )
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id")
    g.add_argument("--hub_token")


def parse_with_config(
    parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv``; ``--config FILE`` (YAML or JSON, dest names as keys) supplies defaults
    that flags on the command line override. Each value goes through its flag's own parsing
    (type, ``choices``, number of values), so a file is checked exactly like the command line;
    a bad or unknown key is an error naming the file and the key."""
    args, _ = parser.parse_known_args(argv)
    if args.config:
        parser.set_defaults(**config_file_values(parser, Path(args.config)))
    args = parser.parse_args(argv)
    if getattr(args, "push_to_hub", False) and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if getattr(args, "report_to", None) == "none":
        args.with_tracking = False
    return args


def config_file_values(parser: argparse.ArgumentParser, path: Path) -> dict:
    """The values of a ``--config`` file, each parsed by its flag's action."""
    try:
        text = path.read_text()
        values = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        parser.error(f"--config {path}: cannot read it ({e})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(values) - set(actions) - {"config"})
    if unknown:
        parser.error(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    parsed = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or value is None:
            continue
        if action.nargs == 0:  # store_true / store_false
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key}: expected true or false, got {value!r}")
            parsed[key] = value if isinstance(action, argparse._StoreTrueAction) else not value
            continue
        tokens = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
        probe = argparse.ArgumentParser(add_help=False, exit_on_error=False)
        probe._add_action(copy.copy(action))
        try:
            parsed[key] = getattr(probe.parse_args([action.option_strings[0], *tokens]), key)
        except argparse.ArgumentError as e:
            parser.error(f"--config {path}: {key}: {e.message}")
    return parsed


def check_trackers(report_to: str) -> None:
    """Fail at start, saying what to install, when ``--with_tracking`` would log nowhere."""
    available = [t.value for t in get_available_trackers()]
    if report_to == "all" and not available:
        raise SystemExit(
            "--with_tracking --report_to all: no tracker is installed; "
            "pip install tensorboard (or agen_hf[tracking]), or wandb"
        )
    if report_to != "all" and report_to not in available:
        package = (
            "tensorboard (or agen_hf[tracking])"
            if report_to == "tensorboard"
            else report_to.replace("_", "-")
        )
        raise SystemExit(
            f"--with_tracking --report_to {report_to}: {report_to} is not "
            f"installed; pip install {package}"
        )


def training_accelerator(
    args: argparse.Namespace, find_unused_parameters: bool = False
) -> Accelerator:
    if args.with_tracking:
        check_trackers(args.report_to)
    return make_accelerator(
        args.cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        ddp_timeout=args.ddp_timeout,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=args.output_dir,
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
        ],
    )


def configure_logging(accelerator: Accelerator) -> None:
    """INFO on the main process, warnings only on the others (every recipe's logging)."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
    )
    for choice in ("precision_choice", "memory_choice"):
        if getattr(accelerator, choice, None):
            logging.getLogger("agen_hf.train").info("%s", getattr(accelerator, choice))
