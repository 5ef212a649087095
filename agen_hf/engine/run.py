"""The start and the end of a training run, around :func:`agen_hf.engine.loop.train`.

:func:`begin`: the loop's options from the flags, the output folder taken for this run
(resumed from ``--resume_from_checkpoint`` only by the same run: :func:`run_fingerprint`), the
trackers. :func:`finish`: the final validation, its figures (``eval_results.json``), the model
folder (``config.json`` + ``model.safetensors`` + model card + ``preprocessor_config.json`` +
every setting of the run, written into a temporary folder and renamed file by file, so that a
kill leaves the previous model whole) and the Hub push. A failed push keeps the saved folder,
is reported in the figures, and makes the run exit with
:data:`~agen_hf.engine.exits.INCOMPLETE_EXIT`, as do bad samples."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml
from accelerate import Accelerator

from ..atomic import write_text_atomic
from ..data.samples import skipped_when_loaded
from ..hub import mean_iou_result
from ..metrics.report import class_iou_markdown
from .accelerator import base_model
from .checkpointing import CheckpointError, fingerprint, replace_files, start_output_dir
from .distributed import from_main, wait_for_main
from .evaluation import validate
from .exits import end_run, skipped_problems
from .loop import LoopOptions, TrainState
from .redaction import redact_args, run_settings

SETTINGS_FILE = "training_args.yaml"  # beside the weights: --config SETTINGS_FILE runs it again

logger = logging.getLogger("agen_hf.train")

RUN_FLAGS = (
    "seed",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optimizer",
    "learning_rate",
    "head_lr_multiplier",
    "momentum",
    "weight_decay",
    "lr_scheduler",
    "lr_decay_epochs",
    "warmup_steps",
    "lr_restart_at",
    "max_grad_norm",
    "seeding_warmup_steps",
    "full_supervision",
    "crop_size",
    "scale_range",
    "deterministic",
    "dataset",
    "train_split",
)
"""The flags that define a run, recorded in its checkpoints' fingerprint (those a recipe has)."""


def begin(
    accelerator: Accelerator, args: argparse.Namespace, model, train_loader, train_ds, project: str
) -> tuple[LoopOptions, TrainState]:
    """After ``accelerator.prepare``: the loop's options from the flags, the output folder
    (taken for this run, resumed from ``--resume_from_checkpoint`` if it is this run's: see
    :func:`run_fingerprint`), and the trackers (``--with_tracking``, the flags as their
    config, secrets redacted)."""
    options = LoopOptions.from_args(
        args, count_steps_per_epoch(accelerator, train_loader, args.gradient_accumulation_steps)
    )
    options.run = run_fingerprint(accelerator, args, model, train_ds, options)
    try:
        state = TrainState(
            **start_output_dir(
                accelerator,
                args.output_dir,
                args.resume_from_checkpoint,
                options.run,
                overwrite=args.overwrite_output_dir,
                allow_schedule_change=args.allow_schedule_change,
            )
        )
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    if args.with_tracking:
        accelerator.init_trackers(project, config=redact_args(args))
    logger.info(
        "%d samples, %d processes, %d steps/epoch, %d steps",
        len(train_loader.dataset),
        accelerator.num_processes,
        options.steps_per_epoch,
        options.max_steps,
    )
    return options, state


def run_fingerprint(
    accelerator: Accelerator, args: argparse.Namespace, model, train_ds, options: LoopOptions
) -> dict:
    """What defines the run: the model's config, the data (classes, sample ids), the
    ``RUN_FLAGS``, the precision, world size x batch x accumulation and the schedule's
    length. A checkpoint resumes only into a run with the same fingerprint."""
    ids = list(train_ds["id"]) if "id" in train_ds.column_names else len(train_ds)
    return fingerprint(
        {
            "model": base_model(accelerator, model).config.to_dict(),
            "data": {"samples": len(train_ds), "ids": ids},
            **{k: getattr(args, k) for k in RUN_FLAGS if hasattr(args, k)},
            "mixed_precision": accelerator.mixed_precision,
            "world_size": accelerator.num_processes,
            "max_steps": options.max_steps,
            "steps_per_epoch": options.steps_per_epoch,
        }
    )


def count_steps_per_epoch(accelerator: Accelerator, train_loader, accumulation: int) -> int:
    """Optimizer steps per epoch of the prepared ``train_loader``; an error if it has none."""
    steps = math.ceil(len(train_loader) / accumulation)
    if steps == 0:
        raise ValueError(
            f"the training set ({len(train_loader.dataset)} samples) is smaller "
            f"than one global batch ({train_loader.total_batch_size} samples over "
            f"{accelerator.num_processes} processes)"
        )
    return steps


def final_results(
    metrics: dict | None, names: list[str], steps: int, seconds: float, **extras
) -> dict:
    """The figures of a finished run, as ``eval_results.json`` holds them; without
    ``metrics`` (a validation split without masks, or none) ``val_mean_iou`` is None and
    ``val_scored`` says why. ``names``: the config's ``label_names``."""
    if metrics is None:
        return {
            "val_mean_iou": None,
            "val_scored": "no masks: no validation split with ground-truth masks to score",
            "steps": steps,
            "train_seconds": seconds,
            **extras,
        }
    return {
        "val_mean_iou": metrics["mean_iou"],
        "val_mean_accuracy": metrics["mean_accuracy"],
        "val_overall_accuracy": metrics["overall_accuracy"],
        "val_per_category_iou": {
            name: float(v) for name, v in zip(names, metrics["per_category_iou"])
        },
        "steps": steps,
        "train_seconds": seconds,
        **extras,
    }


def save_and_push(
    accelerator: Accelerator,
    model,
    output_dir: str | Path,
    result: dict,
    card: dict | None = None,
    hub_model_id: str | None = None,
    hub_token: str | None = None,
    files: dict[str, str] | None = None,
) -> dict:
    """On the main process: save ``model`` (unwrapped) with its card and the text ``files``
    (name -> text) into ``output_dir``, push it to ``hub_model_id`` when given, and write
    ``result`` (plus ``push_error`` if the push failed) as ``eval_results.json``. Every
    process returns ``result`` with the push's outcome, once the main process is done."""
    if accelerator.is_main_process:
        _save_and_push(accelerator, model, output_dir, result, card, hub_model_id, hub_token, files)
    wait_for_main("the final save and Hub push")
    push_error = from_main(result.get("push_error"), "the Hub push's outcome")
    return {**result, "push_error": push_error} if push_error else result


def _save_and_push(
    accelerator: Accelerator,
    model,
    output_dir: str | Path,
    result: dict,
    card: dict | None,
    hub_model_id: str | None,
    hub_token: str | None,
    files: dict[str, str] | None,
) -> None:
    output_dir = Path(output_dir)
    unwrapped = base_model(accelerator, model)
    tmp = output_dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped.save_pretrained(tmp, model_card_kwargs={"repo_id": str(output_dir), **(card or {})})
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    replace_files(tmp, output_dir)
    figure = (
        "no masks to score"
        if result["val_mean_iou"] is None
        else f"{100 * result['val_mean_iou']:.2f}%"
    )
    print(
        f"val mIoU ({result.get('supervision', 'full')} supervision): {figure} after "
        f"{result['steps']} steps; model saved to {output_dir}"
    )
    if hub_model_id:
        try:
            url = unwrapped.push_to_hub(hub_model_id, token=hub_token, model_card_kwargs=card or {})
            print(f"pushed to {url}")
        except Exception as e:  # the local model is already saved: report and go on
            logger.error(
                "push to the Hub failed (%s: %s); the model is saved in %s",
                type(e).__name__,
                e,
                output_dir,
            )
            result["push_error"] = str(e)
    write_text_atomic(output_dir / "eval_results.json", json.dumps(result, indent=2))


def model_card(
    metrics: dict | None,
    names: list[str],
    command: str,
    description: str,
    dataset: tuple[str, str, str, list[str]],
) -> dict:
    """The model card's fields for a trained model: the per-class IoU table, the
    ``model-index`` result (``dataset``: type, name, split, tags; none without ``metrics``)
    and how it was trained (``description`` and the redacted ``command``)."""
    kind, name, split, tags = dataset
    training = (
        f"Trained on {name} ({len(names) - 1} classes: {', '.join(names[1:])}).\n\n"
        f"{description}\n\n```bash\n{command}\n```"
    )
    common = {"training": training, "dataset_tags": tags, "num_labels": len(names)}
    if metrics is None:
        return {"metrics": f"No masks to score on {name}: no mIoU.", **common}
    return {
        "metrics": class_iou_markdown(metrics["per_category_iou"], metrics["mean_iou"], names),
        "eval_results": [mean_iou_result(metrics["mean_iou"], kind, name, split)],
        **common,
    }


def finish(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model,
    val_loader,
    state: TrainState,
    started: float,
    card: Callable[[dict], dict],
    *,
    loaded: tuple = (),
    **extras,
) -> dict:
    """The end of every training recipe: the final validation, ``eval_results.json``, the
    model folder with ``card(metrics)`` and every setting of the run (:data:`SETTINGS_FILE`,
    also in the card, so that the card's command and settings reproduce it), the Hub push
    (``--push_to_hub``) and the trackers' end. Returns the figures; exits with
    ``INCOMPLETE_EXIT`` after saving everything when the push failed or bad samples were
    skipped: when the datasets ``loaded`` were built, in the final validation, or replaced in
    training."""
    metrics = (
        None
        if val_loader is None
        else validate(
            accelerator, model, val_loader, state.global_step, state.epoch, args.with_tracking
        )
    )
    config = base_model(accelerator, model).config
    result = final_results(
        metrics, config.label_names, state.global_step, time.time() - started, **extras
    )
    skipped = sum(skipped_when_loaded(ds) for ds in loaded) + (metrics or {}).get("skipped", 0)
    if skipped:
        result["bad_samples_skipped"] = skipped
    if (metrics or {}).get("skipped_samples"):
        result["val_skipped_samples"] = metrics["skipped_samples"]
    problems = skipped_problems(skipped, "bad samples", "when the data was loaded or validated")
    if state.bad_samples:
        result["bad_samples_replaced"] = state.bad_samples
        problems.append(
            f"{state.bad_samples} bad training samples were replaced by "
            "substitutes (--skip_bad_samples; the warnings name their files)"
        )
    settings = yaml.safe_dump(run_settings(args), sort_keys=True)
    fields = card(metrics)
    fields["training"] += (
        f"\n\nEvery setting of the run, from its `--config` file and command line together "
        f"(`{SETTINGS_FILE}` in the run's output folder; `--config {SETTINGS_FILE}` runs it "
        f"again):\n\n```yaml\n{settings}```"
    )
    result = save_and_push(
        accelerator,
        model,
        args.output_dir,
        result,
        fields,
        args.hub_model_id if args.push_to_hub else None,
        args.hub_token,
        files={SETTINGS_FILE: settings},
    )
    if result.get("push_error"):
        problems.append(
            f"the push to {args.hub_model_id} failed ({result['push_error']}); "
            f"the model is saved in {args.output_dir}"
        )
    end_run(accelerator, problems)  # the trackers' end too
    return result
