"""The epoch/step loop every training recipe shares (section IV.1): one optimizer step at a
time (the batch into the model, the loss out; gradient accumulation, non-finite losses and
gradients skipped, clipping, the scheduled learning rate), its log record, checkpoints,
validation between epochs; resumable exactly, and stopped cleanly by a preemption signal
(SIGTERM, SIGUSR1: checkpoint, exit 75). A recipe brings the prepared model, optimizer and
loader, and what the model learns from (:class:`~agen_hf.engine.supervision.Supervision`);
:class:`agen_hf.engine.run.TrainingRun` starts the run before :func:`train` and validates,
saves and pushes after it."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
from accelerate import Accelerator

from ..losses import ProcessGroup
from ..progress import progress
from .accelerator import base_model
from .arguments import TrainingArguments
from .checkpoints import save_checkpoint
from .distributed import collective, wait_for_main
from .evaluation import validate
from .exits import REQUEUE_EXIT
from .schedule import lr_factor
from .supervision import Supervision

logger = logging.getLogger("agen_hf.train")


@dataclass
class TrainState:
    """Where training stands: saved as ``trainer_state.json`` in every checkpoint."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    bad_samples: int = 0  # replaced by substitutes so far, over every process


@dataclass
class LoopOptions:
    """How :func:`train` runs: its length, schedule, checkpoints, validation and logging."""

    output_dir: Path
    max_steps: int
    steps_per_epoch: int
    lr_factor: Callable[[int], float]
    max_grad_norm: float | None = None
    max_nonfinite_steps: int = 5
    checkpointing_steps: int = 0
    checkpoints_total_limit: int | None = 3
    eval_every_epochs: int = 1
    logging_steps: int = 10
    with_tracking: bool = False
    channels_last: bool = False
    run: dict | None = None  # the fingerprint checkpoints record (run_fingerprint)

    @classmethod
    def from_training(cls, training: TrainingArguments, steps_per_epoch: int) -> "LoopOptions":
        """From a recipe's :class:`~agen_hf.engine.arguments.TrainingArguments`."""
        max_steps = training.max_train_steps or training.num_train_epochs * steps_per_epoch
        schedule = partial(
            lr_factor,
            training.lr_scheduler,
            max_steps=max_steps,
            steps_per_epoch=steps_per_epoch,
            decay_epochs=training.lr_decay_epochs,
            warmup_steps=training.warmup_steps,
            restart_at=training.lr_restart_at,
        )
        flags = (
            "max_grad_norm",
            "max_nonfinite_steps",
            "checkpointing_steps",
            "checkpoints_total_limit",
            "eval_every_epochs",
            "logging_steps",
            "with_tracking",
            "channels_last",
        )  # fields named as their flags
        return cls(
            output_dir=Path(training.output_dir),
            max_steps=max_steps,
            steps_per_epoch=steps_per_epoch,
            lr_factor=schedule,
            **{name: getattr(training, name) for name in flags},
        )


def process_group(accelerator: Accelerator) -> ProcessGroup | None:
    """How batch-wide means are pooled over data-parallel processes (None for one)."""
    if accelerator.num_processes == 1:
        return None
    return ProcessGroup(accelerator.num_processes, lambda t: accelerator.reduce(t, "sum"))


def training_step(
    accelerator: Accelerator,
    model,
    optimizer,
    base_lrs: list[float],
    batch,
    supervision: Supervision,
    group: ProcessGroup | None,
    step: int,
    options: LoopOptions,
    stop_requested: bool = False,
) -> "StepResult":
    """Forward (the batch into the model as ``supervision`` says, the loss out), backward and
    (at an accumulation boundary) the optimizer step at the learning rate
    ``base * lr_factor(step)``. Returns the loss terms, or None when the loss
    was not finite on some process (then every process skips the batch together, or DDP would
    hang) or, at the boundary, the gradient was not (it is the same on every process after
    DDP's all-reduce): no gradient is kept, nothing is applied. Also, agreed in the same
    all-reduce as the loss check: whether some process was asked to stop
    (``stop_requested``), and how many bad samples the global batch replaced."""
    if options.channels_last:
        batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
    # the batch statistics pooled in the forward, the checks' all-reduce, DDP's gradients
    with collective(f"training step {step + 1}"), accelerator.accumulate(model):
        outputs = model(**supervision.model_inputs(batch, step), process_group=group)
        loss, terms = outputs.loss, outputs.loss_terms
        flags = torch.cat(
            [
                (~torch.isfinite(loss.detach())).float().reshape(1),
                torch.tensor(
                    [float(stop_requested), len(batch.get("replaced", ()))], device=loss.device
                ),
            ]
        )
        nonfinite, stop, replaced = accelerator.reduce(flags, "sum").tolist()
        if nonfinite:
            logger.warning("step %d: non-finite loss (%s), step skipped", step, loss.item())
            optimizer.zero_grad()
            return StepResult(None, stop > 0, int(replaced))
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            norm = gradient_norm(accelerator, model, options.max_grad_norm)
            if norm is not None and not math.isfinite(norm):
                logger.warning("step %d: non-finite gradient (norm %s), step skipped", step, norm)
                optimizer.zero_grad()
                return StepResult(None, stop > 0, int(replaced))
            factor = options.lr_factor(step)
            for param_group, base in zip(optimizer.param_groups, base_lrs):
                param_group["lr"] = base * factor
        optimizer.step()
        optimizer.zero_grad()
    return StepResult(terms, stop > 0, int(replaced))


class StepResult(NamedTuple):
    terms: dict[str, torch.Tensor] | None  # None: the step was skipped (non-finite)
    stop: bool  # some process was asked to stop
    replaced: int  # bad samples of the global batch replaced by substitutes


def gradient_norm(accelerator: Accelerator, model, max_norm: float | None) -> float | None:
    """The global gradient norm, clipped to ``max_norm`` when given; None under an fp16 loss
    scaler, which skips non-finite steps itself."""
    norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm)) if max_norm else None
    if accelerator.scaler is not None:
        return None
    if norm is None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
    return norm


class Preemption:
    """While entered, SIGTERM and SIGUSR1 (what SLURM and Kubernetes send ahead of a kill)
    only record the signal: :func:`train` sees it between steps, agrees on it across processes,
    checkpoints and exits with :data:`REQUEUE_EXIT`. (Off the main thread, where Python cannot
    take signals, it does nothing.)"""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict = {}

    def _record(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._record) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def check_nonfinite(in_a_row: int, limit: int, step: int) -> int:
    """``in_a_row`` non-finite losses so far; too many is divergence, an error that says what
    to try."""
    if in_a_row >= limit:
        raise RuntimeError(
            f"{in_a_row} non-finite losses in a row (a loss or its gradient) "
            f"at step {step}: training diverged. Lower --learning_rate, try "
            "--mixed_precision no, or check the data with "
            "`python -m agen_hf.data.validate`"
        )
    return in_a_row


def log_step(
    accelerator: Accelerator,
    state: TrainState,
    terms: dict[str, torch.Tensor],
    lr: float,
    extras: dict,
    options: LoopOptions,
) -> dict:
    """The step's record (every term averaged over processes, their total, the learning rate,
    ``extras``): a line of ``train_log.jsonl`` always, the tracker every ``logging_steps``."""
    # float64 so that the logged total is as exact as its terms
    with collective(f"step {state.global_step}'s log record"):
        values = accelerator.reduce(
            torch.stack([t.detach().double() for t in terms.values()]), "mean"
        ).tolist()
    record = {
        "step": state.global_step,
        "epoch": state.epoch,
        "loss": sum(values),
        **dict(zip(terms, values)),
        "lr": lr,
        **extras,
    }
    if accelerator.is_main_process:
        with open(options.output_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
    if options.with_tracking and state.global_step % options.logging_steps == 0:
        accelerator.log(
            {f"train/{k}": v for k, v in record.items() if k != "step"}, step=state.global_step
        )
    return record


def epoch_batches(
    accelerator: Accelerator, train_loader, state: TrainState, epoch: int
) -> Iterator:
    """Epoch ``epoch``'s batches, without those a resumed run already trained on."""
    skip = state.batches_in_epoch if epoch == state.epoch else 0
    loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
    loader.set_epoch(epoch)  # Accelerate's loader owns the epoch it hands to our sampler
    state.epoch, state.batches_in_epoch = epoch, skip
    return iter(loader)


def train(
    accelerator: Accelerator,
    model,
    optimizer,
    base_lrs: list[float],
    train_loader,
    supervision: Supervision,
    options: LoopOptions,
    state: TrainState,
    *,
    val_loader=None,
    log_extras: Callable[[], dict] | None = None,
) -> TrainState:
    """Train from ``state`` to ``options.max_steps``: a checkpoint every
    ``checkpointing_steps``, at every epoch end and at the last step, each a loadable model
    folder; :func:`~agen_hf.engine.evaluation.validate` on ``val_loader`` every
    ``eval_every_epochs`` epochs before the last. A run resumed from its last checkpoint
    trains nothing."""
    group = process_group(accelerator)
    model_files = base_model(accelerator, model).save_model_config
    saved_at = [state.global_step]  # a fresh run: step 0 needs no checkpoint

    def checkpoint() -> None:
        save_checkpoint(
            accelerator,
            options.output_dir,
            state.global_step,
            {**asdict(state), "run": options.run},
            options.checkpoints_total_limit,
            model_files=model_files,
        )
        saved_at[0] = state.global_step

    num_epochs = math.ceil(options.max_steps / options.steps_per_epoch)
    bar = progress(
        desc="train",
        total=options.max_steps,
        initial=state.global_step,
        main_process=accelerator.is_main_process,
    )
    model.train()
    nonfinite, stopping = 0, False
    with Preemption() as preemption:
        for epoch in range(state.epoch, num_epochs if state.global_step < options.max_steps else 0):
            for batch in epoch_batches(accelerator, train_loader, state, epoch):
                state.batches_in_epoch += 1
                terms, stop, replaced = training_step(
                    accelerator,
                    model,
                    optimizer,
                    base_lrs,
                    batch,
                    supervision,
                    group,
                    state.global_step,
                    options,
                    preemption.received is not None,
                )
                stopping, state.bad_samples = stopping or stop, state.bad_samples + replaced
                nonfinite = check_nonfinite(
                    nonfinite + 1 if terms is None else 0,
                    options.max_nonfinite_steps,
                    state.global_step,
                )
                if not accelerator.sync_gradients:
                    continue
                if terms is not None:
                    state.global_step += 1
                    record = log_step(
                        accelerator,
                        state,
                        terms,
                        optimizer.param_groups[0]["lr"],
                        log_extras() if log_extras else {},
                        options,
                    )
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
                    if (
                        options.checkpointing_steps
                        and state.global_step % options.checkpointing_steps == 0
                    ):
                        checkpoint()
                if stopping:
                    bar.close()
                    if saved_at[0] != state.global_step:
                        checkpoint()
                    stop_for_requeue(accelerator, preemption.received, state, options)
                if state.global_step >= options.max_steps:
                    break
            if state.batches_in_epoch >= len(train_loader):  # the epoch is complete
                state.epoch, state.batches_in_epoch = epoch + 1, 0
                if saved_at[0] != state.global_step:
                    checkpoint()
                if (
                    val_loader is not None
                    and options.eval_every_epochs
                    and (epoch + 1) % options.eval_every_epochs == 0
                    and state.global_step < options.max_steps
                ):
                    validate(
                        accelerator,
                        model,
                        val_loader,
                        state.global_step,
                        epoch,
                        options.with_tracking,
                    )
            if state.global_step >= options.max_steps:
                break
    bar.close()
    if saved_at[0] != state.global_step:
        checkpoint()  # the last step too: a rerun after a crash from here on trains nothing
    return state


def stop_for_requeue(
    accelerator: Accelerator, received: str | None, state: TrainState, options: LoopOptions
) -> None:
    """After the checkpoint of a preempted run: say so and exit with :data:`REQUEUE_EXIT`
    (every process, together)."""
    wait_for_main("the stop for a requeue")
    signal_name = received or "a preemption signal on another process"
    message = (
        f"stopped by {signal_name} after step {state.global_step}: "
        f"checkpoint-{state.global_step} written in {options.output_dir}; run the same "
        f"command with --resume_from_checkpoint auto to continue (exit {REQUEUE_EXIT}: "
        "requeue)"
    )
    logger.warning("%s", message)
    accelerator.end_training()  # the trackers' end and the process group's, as a finished run
    raise SystemExit(REQUEUE_EXIT)
