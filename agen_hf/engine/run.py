"""A training run from its start to its end, around :func:`agen_hf.engine.loop.train`, as one
object with named steps (:class:`TrainingRun`).

:meth:`~TrainingRun.start`: the loop's options, the output folder taken for this run (resumed
from ``--resume_from_checkpoint`` only by the same run: :meth:`~TrainingRun.fingerprint`), the
trackers. :meth:`~TrainingRun.finish`: :meth:`~TrainingRun.validate` (the final validation),
:meth:`~TrainingRun.save` (``config.json`` + ``model.safetensors`` + model card +
``preprocessor_config.json`` + every setting of the run, written into a temporary folder and
renamed file by file, so that a kill leaves the previous model whole), :meth:`~TrainingRun.push`
(the Hub), the figures (``eval_results.json``) and :meth:`~TrainingRun.end` (the exit status:
:data:`~agen_hf.engine.exits.INCOMPLETE_EXIT` when the push failed or bad samples were
skipped or replaced, on every process)."""

from __future__ import annotations

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
from ..data.decoding import skipped_when_loaded
from ..hub import mean_iou_result
from ..metrics.report import class_iou_markdown
from .accelerator import base_model
from .arguments import TrainingArguments
from .checkpoints import CheckpointError, replace_files
from .distributed import from_main, wait_for_main
from .evaluation import validate
from .exits import end_run, skipped_problems
from .loop import LoopOptions, TrainState
from .redaction import redact_args, run_settings
from .run_folder import fingerprint, start_output_dir

SETTINGS_FILE = "training_args.yaml"  # beside the weights: --config SETTINGS_FILE runs it again

logger = logging.getLogger("agen_hf.train")


class TrainingRun:
    """One training run of a recipe.

    ``values``: every flag's value (the recipe's argument dataclasses merged:
    :func:`agen_hf.arguments.flag_values`), written as the run's settings
    (:data:`SETTINGS_FILE`, the card) and given to the trackers, secrets left out or redacted;
    ``defines_run``: the values that define the run (:func:`agen_hf.arguments.run_defining`),
    part of its fingerprint; ``project``: the trackers' project name."""

    def __init__(
        self,
        accelerator: Accelerator,
        training: TrainingArguments,
        values: dict,
        defines_run: dict,
        project: str,
    ) -> None:
        self.accelerator = accelerator
        self.training = training
        self.values = values
        self.defines_run = defines_run
        self.project = project
        self.started = time.time()

    def start(self, model, train_loader, train_ds) -> tuple[LoopOptions, TrainState]:
        """After ``accelerator.prepare``: the loop's options, the output folder (taken for this
        run, resumed from ``--resume_from_checkpoint`` if it is this run's), and the trackers
        (``--with_tracking``, the settings as their config, secrets redacted)."""
        accelerator, training = self.accelerator, self.training
        options = LoopOptions.from_training(
            training,
            count_steps_per_epoch(accelerator, train_loader, training.gradient_accumulation_steps),
        )
        options.run = self.fingerprint(model, train_ds, options)
        try:
            state = TrainState(
                **start_output_dir(
                    accelerator,
                    training.output_dir,
                    training.resume_from_checkpoint,
                    options.run,
                    overwrite=training.overwrite_output_dir,
                    allow_schedule_change=training.allow_schedule_change,
                )
            )
        except CheckpointError as e:
            raise SystemExit(f"error: {e}") from None
        if training.with_tracking:
            accelerator.init_trackers(self.project, config=redact_args(self.values))
        logger.info(
            "%d samples, %d processes, %d steps/epoch, %d steps",
            len(train_loader.dataset),
            accelerator.num_processes,
            options.steps_per_epoch,
            options.max_steps,
        )
        self.started = time.time()
        return options, state

    def fingerprint(self, model, train_ds, options: LoopOptions) -> dict:
        """What defines the run: the model's config, the data (classes, sample ids), the
        values that define it, the precision, world size x batch x accumulation and the
        schedule's length. A checkpoint resumes only into a run with the same fingerprint."""
        ids = list(train_ds["id"]) if "id" in train_ds.column_names else len(train_ds)
        return fingerprint(
            {
                "model": base_model(self.accelerator, model).config.run_dict(),
                "data": {"samples": len(train_ds), "ids": ids},
                **self.defines_run,
                "mixed_precision": self.accelerator.mixed_precision,
                "world_size": self.accelerator.num_processes,
                "max_steps": options.max_steps,
                "steps_per_epoch": options.steps_per_epoch,
            }
        )

    def finish(
        self,
        model,
        val_loader,
        state: TrainState,
        card: Callable[[dict | None], dict],
        *,
        loaded: tuple = (),
        **extras,
    ) -> dict:
        """The end of every training recipe: validate, the figures, save (with ``card(metrics)``
        and every setting), push, ``eval_results.json``, the exit status. Returns the figures;
        exits with ``INCOMPLETE_EXIT`` after saving everything when the push failed or bad
        samples were skipped (when the datasets ``loaded`` were built, in the final
        validation) or replaced in training."""
        metrics = self.validate(model, val_loader, state)
        config = base_model(self.accelerator, model).config
        result = final_results(
            metrics, config.label_names, state.global_step, time.time() - self.started, **extras
        )
        problems = self.bad_sample_problems(result, metrics, state, loaded)
        fields = self.card(card(metrics))
        self.save(model, fields, result)
        push_error = self.push(model, fields)
        if push_error:
            result["push_error"] = push_error
            problems.append(
                f"the push to {self.training.hub_model_id} failed ({push_error}); "
                f"the model is saved in {self.training.output_dir}"
            )
        self.write_results(result)
        self.end(problems)
        return result

    def validate(self, model, val_loader, state: TrainState) -> dict | None:
        """The final validation's figures (None without a split to score)."""
        if val_loader is None:
            return None
        return validate(
            self.accelerator,
            model,
            val_loader,
            state.global_step,
            state.epoch,
            self.training.with_tracking,
        )

    def bad_sample_problems(
        self, result: dict, metrics: dict | None, state: TrainState, loaded: tuple
    ) -> list[str]:
        """Count the bad samples skipped (when ``loaded`` was built, in the final validation)
        and replaced (in training) into ``result``; the problem lines they make."""
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
        return problems

    def settings_yaml(self) -> str:
        """Every setting of the run, as :data:`SETTINGS_FILE` holds them."""
        return yaml.safe_dump(run_settings(self.values), sort_keys=True)

    def card(self, fields: dict) -> dict:
        """The model card's fields with every setting of the run appended to its training
        section, so that the card's command and settings reproduce it."""
        fields = dict(fields)
        fields["training"] += (
            f"\n\nEvery setting of the run, from its `--config` file and command line together "
            f"(`{SETTINGS_FILE}` in the run's output folder; `--config {SETTINGS_FILE}` runs it "
            f"again):\n\n```yaml\n{self.settings_yaml()}```"
        )
        return fields

    def save(self, model, card: dict, result: dict) -> None:
        """The model folder (unwrapped model, ``card``, :data:`SETTINGS_FILE`), written by the
        main process through a temporary folder; every process waits for it."""
        output_dir = Path(self.training.output_dir)
        if self.accelerator.is_main_process:
            tmp = output_dir / ".tmp-model"
            shutil.rmtree(tmp, ignore_errors=True)
            base_model(self.accelerator, model).save_pretrained(
                tmp, model_card_kwargs={"repo_id": str(output_dir), **card}
            )
            (tmp / SETTINGS_FILE).write_text(self.settings_yaml())
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
        wait_for_main("the final save")

    def push(self, model, card: dict) -> str | None:
        """``--push_to_hub``: the model to ``--hub_model_id`` (by the main process); the
        error, on every process, when it failed (the saved model stays)."""
        training = self.training
        if not training.push_to_hub:
            return None
        error = None
        if self.accelerator.is_main_process:
            try:
                url = base_model(self.accelerator, model).push_to_hub(
                    training.hub_model_id, token=training.hub_token, model_card_kwargs=card
                )
                print(f"pushed to {url}")
            except Exception as e:  # the local model is already saved: report and go on
                logger.error(
                    "push to the Hub failed (%s: %s); the model is saved in %s",
                    type(e).__name__,
                    e,
                    training.output_dir,
                )
                error = str(e)
        wait_for_main("the Hub push")
        return from_main(error, "the Hub push's outcome")

    def write_results(self, result: dict) -> None:
        """``eval_results.json`` in the output folder (the main process)."""
        if self.accelerator.is_main_process:
            path = Path(self.training.output_dir) / "eval_results.json"
            write_text_atomic(path, json.dumps(result, indent=2))

    def end(self, problems: list[str]) -> None:
        """The exit status, on every process (:func:`~agen_hf.engine.exits.end_run`; the
        trackers end there too)."""
        end_run(self.accelerator, problems)


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
