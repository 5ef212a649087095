"""The training engine the recipes share: typed arguments, the loop and its step, checkpoints,
the run folder, the start and end of a run, deterministic sampling, distributed evaluation,
precision, the learning-rate schedule."""

from .accelerator import cpus_per_process, make_accelerator
from .checkpoints import (
    list_checkpoints,
    load_checkpoint,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .evaluation import evaluate_segmentation, shard_loader
from .sampling import EpochSampler, SeededSamples
from .schedule import step_decay

__all__ = [
    "EpochSampler",
    "SeededSamples",
    "cpus_per_process",
    "evaluate_segmentation",
    "list_checkpoints",
    "load_checkpoint",
    "make_accelerator",
    "remove_partial_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
    "shard_loader",
    "step_decay",
]
