"""The end of a training run: its figures (``eval_results.json``), the model folder
(``config.json`` + ``model.safetensors`` + model card + ``preprocessor_config.json``, written
into a temporary folder and renamed file by file, so that a kill leaves the previous model
whole) and the Hub push. A failed push keeps the saved folder, is reported in the figures, and
makes the run exit with :data:`~agen_hf.engine.exits.INCOMPLETE_EXIT`, as do bad samples."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from accelerate import Accelerator

from ..data.samples import skipped_when_loaded
from ..hub import mean_iou_result
from ..metrics.report import class_iou_markdown
from .accelerator import base_model
from .checkpointing import replace_files, write_text_atomic
from .evaluation import validate
from .exits import exit_if_incomplete, skipped_problems
from .loop import TrainState

logger = logging.getLogger("agen_hf.train")


def final_results(
    metrics: dict | None, id2label: dict, steps: int, seconds: float, **extras
) -> dict:
    """The figures of a finished run, as ``eval_results.json`` holds them; without
    ``metrics`` (a validation split without masks, or none) ``val_mean_iou`` is None and
    ``val_scored`` says why."""
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
            id2label[i]: float(v) for i, v in enumerate(metrics["per_category_iou"])
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
) -> dict:
    """On the main process: save ``model`` (unwrapped) with its card into ``output_dir``, push
    it to ``hub_model_id`` when given, and write ``result`` (plus ``push_error`` if the push
    failed) as ``eval_results.json``. Returns ``result``."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return result
    output_dir = Path(output_dir)
    unwrapped = base_model(accelerator, model)
    tmp = output_dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped.save_pretrained(tmp, model_card_kwargs={"repo_id": str(output_dir), **(card or {})})
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
    return result


def model_card(
    metrics: dict | None,
    id2label: dict,
    command: str,
    description: str,
    dataset: tuple[str, str, str, list[str]],
) -> dict:
    """The model card's fields for a trained model: the per-class IoU table, the
    ``model-index`` result (``dataset``: type, name, split, tags; none without ``metrics``)
    and how it was trained (``description`` and the redacted ``command``)."""
    names = [id2label[i] for i in range(len(id2label))]
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
    model folder with ``card(metrics)``, the Hub push (``--push_to_hub``) and the trackers'
    end. Returns the figures; exits with ``INCOMPLETE_EXIT`` after saving everything when the
    push failed or bad samples were skipped: when the datasets ``loaded`` were built, in the
    final validation, or replaced in training."""
    metrics = (
        None
        if val_loader is None
        else validate(
            accelerator, model, val_loader, state.global_step, state.epoch, args.with_tracking
        )
    )
    config = base_model(accelerator, model).config
    result = final_results(
        metrics, config.id2label, state.global_step, time.time() - started, **extras
    )
    skipped = sum(skipped_when_loaded(ds) for ds in loaded) + (metrics or {}).get("skipped", 0)
    if skipped:
        result["bad_samples_skipped"] = skipped
    problems = skipped_problems(skipped, "bad samples", "when the data was loaded or validated")
    if state.bad_samples:
        result["bad_samples_replaced"] = state.bad_samples
        problems.append(
            f"{state.bad_samples} bad training samples were replaced by "
            "substitutes (--skip_bad_samples; the warnings name their files)"
        )
    save_and_push(
        accelerator,
        model,
        args.output_dir,
        result,
        card(metrics),
        args.hub_model_id if args.push_to_hub else None,
        args.hub_token,
    )
    if args.with_tracking:
        accelerator.end_training()
    if result.get("push_error"):
        problems.append(
            f"the push to {args.hub_model_id} failed ({result['push_error']}); "
            f"the model is saved in {args.output_dir}"
        )
    accelerator.wait_for_everyone()
    exit_if_incomplete(problems)
    return result
