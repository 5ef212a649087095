"""The training loop every recipe shares (section IV.1's schedule by default): argument
groups, optimiser, and ``run_training`` — Accelerate's prepare, gradient accumulation,
non-finite-loss skipping, step learning-rate decay, exact resume, atomic checkpoints,
validation by a summed confusion matrix, tracking, the final save (config.json +
model.safetensors + model card) and the Hub push. A recipe brings the data, the model and
``compute_loss``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from torch.utils.data import DataLoader

from ..data.transforms import collate, eval_transform, train_transform, with_transforms
from ..losses import DataParallel
from .accelerator import make_accelerator
from .checkpointing import (load_checkpoint, remove_partial_checkpoints, resolve_checkpoint,
                            save_checkpoint)
from .evaluation import evaluate_segmentation, shard_loader
from .redaction import redact_args
from .sampling import EpochSampler, SeededSamples
from .schedule import SCHEDULES, lr_factor

logger = logging.getLogger("agen_hf.train")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The optimisation, checkpoint, evaluation, logging and Hub flags (paper defaults)."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--per_device_train_batch_size", type=int, default=15)
    g.add_argument("--per_device_eval_batch_size", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=1e-3, help="backbone learning rate")
    g.add_argument("--head_lr_multiplier", type=float, default=10.0,
                   help="AGMs and new heads train at this multiple of --learning_rate")
    g.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                   help="sgd (the paper's, with --momentum) or adamw (for models trained from "
                        "scratch, e.g. on the synthetic data)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--num_train_epochs", type=int, default=35)
    g.add_argument("--max_train_steps", type=int, default=None,
                   help="overrides --num_train_epochs")
    g.add_argument("--lr_decay_epochs", type=int, default=10,
                   help="with --lr_scheduler step: divide the lr by 10 every N epochs")
    g.add_argument("--lr_scheduler", choices=SCHEDULES, default="step",
                   help="step (the paper's), poly or cosine (for models trained from scratch)")
    g.add_argument("--warmup_steps", type=int, default=0,
                   help="linear learning-rate warm-up over the first N optimizer steps")
    g.add_argument("--lr_restart_at", type=int, default=0,
                   help="poly/cosine: restart the schedule (warm-up included) at step N, e.g. "
                        "where a classification-first phase ends (0: one cycle)")
    g.add_argument("--max_grad_norm", type=float, default=None,
                   help="clip the global gradient norm (the paper does not clip)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    g.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across GPUs")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is there")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels: bit-identical reruns and resumes")
    g.add_argument("--max_nonfinite_steps", type=int, default=5,
                   help="abort after this many NaN/inf losses in a row (each one is skipped)")
    g = p.add_argument_group("checkpoints, evaluation, logging")
    g.add_argument("--output_dir", default="runs/agen")
    g.add_argument("--checkpointing_steps", type=int, default=0,
                   help="checkpoint every N optimizer steps (0: only at the end of each epoch)")
    g.add_argument("--checkpoints_total_limit", type=int, default=3)
    g.add_argument("--resume_from_checkpoint", help="latest or a checkpoint folder")
    g.add_argument("--eval_every_epochs", type=int, default=1, help="0: only at the end")
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--with_tracking", action="store_true")
    g.add_argument("--report_to", default="tensorboard", help="tensorboard, wandb or all")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id")
    g.add_argument("--hub_token")


def parse_with_config(parser: argparse.ArgumentParser,
                      argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``--config FILE`` (YAML or JSON, dest names as keys) supplies defaults
    that flags on the command line override. Unknown keys are an error naming the file."""
    args, _ = parser.parse_known_args(argv)
    if args.config:
        path = Path(args.config)
        try:
            text = path.read_text()
            import yaml

            values = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
        except (OSError, ValueError, yaml.YAMLError) as e:
            parser.error(f"--config {path}: cannot read it ({e})")
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"--config {path}: unknown option(s) {', '.join(unknown)}")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    if getattr(args, "push_to_hub", False) and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    return args


def training_accelerator(args: argparse.Namespace,
                         find_unused_parameters: bool = False) -> Accelerator:
    return make_accelerator(
        args.cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=(None if not args.with_tracking else
                  ["tensorboard", "wandb"] if args.report_to == "all" else [args.report_to]),
        project_dir=args.output_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=find_unused_parameters)],
    )


def build_optimizer(model: torch.nn.Module, args: argparse.Namespace
                    ) -> tuple[torch.optim.Optimizer, list[float]]:
    """SGD (or AdamW) over ``model.parameter_groups()``: the ImageNet-initialised backbone at
    ``--learning_rate``, the new layers at ``--head_lr_multiplier`` times it."""
    groups = model.parameter_groups()
    base_lrs = [args.learning_rate, args.learning_rate * args.head_lr_multiplier]
    param_groups = [
        {"params": [q for q in groups["backbone"] if q.requires_grad], "lr": base_lrs[0]},
        {"params": [q for q in groups["new"] if q.requires_grad], "lr": base_lrs[1]}]
    optimizer = torch.optim.SGD(param_groups, momentum=args.momentum,
                                weight_decay=args.weight_decay) if args.optimizer == "sgd" \
        else torch.optim.AdamW(param_groups, weight_decay=args.weight_decay)
    return optimizer, base_lrs


def training_loaders(accelerator: Accelerator, args: argparse.Namespace, train_ds, val_ds):
    """The paper's augmentation with deterministic per-sample seeds and epoch order (exact
    resume), and this process's shard of the val set at original size."""
    train_samples = SeededSamples(with_transforms(
        train_ds, train_transform(args.crop_size, tuple(args.scale_range)),
        args.skip_bad_samples), args.seed)
    train_loader = DataLoader(train_samples, batch_size=args.per_device_train_batch_size,
                              sampler=EpochSampler(len(train_samples), args.seed),
                              collate_fn=collate, drop_last=True, num_workers=args.num_workers,
                              # its own generator: creating an iterator (e.g. on resume) must
                              # not consume the global RNG that dropout draws from
                              generator=torch.Generator().manual_seed(args.seed),
                              persistent_workers=args.num_workers > 0)
    val_loader = shard_loader(with_transforms(val_ds, eval_transform(), args.skip_bad_samples),
                              accelerator, args.per_device_eval_batch_size, args.num_workers)
    return train_loader, val_loader


LossFn = Callable[[torch.nn.Module, dict, "DataParallel | None", int],
                  tuple[torch.Tensor, dict[str, torch.Tensor]]]


def run_training(accelerator: Accelerator, args: argparse.Namespace, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, base_lrs: list[float], train_loader,
                 val_loader, compute_loss: LossFn, *, project: str = "agen",
                 log_extras: Callable[[torch.nn.Module], dict] | None = None,
                 model_card: Callable[[dict], dict] | None = None,
                 result_extras: dict | None = None) -> dict:
    """Train ``model`` with ``compute_loss(model, batch, data_parallel, step) -> (loss,
    terms)`` (``step``: optimizer steps done so far),
    validate on ``val_loader`` (a :func:`shard_loader`), save to ``args.output_dir`` and
    return (and write, as ``eval_results.json``) the final figures."""
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_partial_checkpoints(output_dir):
            logger.warning("removed %s, left by an interrupted checkpoint save", stale)
    if args.compile:
        model = torch.compile(model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    unwrapped = accelerator.unwrap_model(model)
    final = getattr(unwrapped, "_orig_mod", unwrapped)
    config = final.config

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({len(train_loader.dataset)} samples) is smaller than one "
                         f"global batch ({args.per_device_train_batch_size} x "
                         f"{accelerator.num_processes} processes)")
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    data_parallel = DataParallel(accelerator.num_processes,
                                 lambda t: accelerator.reduce(t, "sum")) \
        if accelerator.num_processes > 1 else None

    state = {"global_step": 0, "epoch": 0, "batches_in_epoch": 0}
    if args.resume_from_checkpoint:
        path = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
        state = load_checkpoint(accelerator, path)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path,
                    state["global_step"], state["epoch"], state["batches_in_epoch"])
    if args.with_tracking:
        accelerator.init_trackers(project, config=redact_args(args))
    log_path = output_dir / "train_log.jsonl"
    logger.info("%d samples, %d processes, %d steps/epoch, %d steps",
                len(train_loader.dataset), accelerator.num_processes, steps_per_epoch,
                max_steps)

    def predict(pixel_values):
        return model(pixel_values, segmentation_only=True).logits

    def evaluate(epoch: int) -> dict:
        model.eval()
        metrics = evaluate_segmentation(accelerator, predict, val_loader, config.num_labels,
                                        config.ignore_index)
        model.train()
        logger.info("epoch %d: val mIoU %.2f%%", epoch, 100 * metrics["mean_iou"])
        if args.with_tracking:
            per_class = {f"val/iou_{config.id2label[i]}": float(v)
                         for i, v in enumerate(metrics["per_category_iou"])}
            accelerator.log({"val/mean_iou": metrics["mean_iou"], **per_class},
                            step=state["global_step"])
        return metrics

    metrics: dict | None = None
    nonfinite = 0
    progress = None
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(total=max_steps, initial=state["global_step"], desc="train")
    model.train()
    started = time.time()
    for epoch in range(state["epoch"], num_epochs):
        skip = state["batches_in_epoch"] if epoch == state["epoch"] else 0
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        loader.set_epoch(epoch)  # Accelerate's loader owns the epoch it hands to our sampler
        state.update(epoch=epoch, batches_in_epoch=skip)
        for batch in loader:
            state["batches_in_epoch"] += 1
            if batch is None:  # every sample of this batch was bad and skipped
                continue
            with accelerator.accumulate(model):
                loss, terms = compute_loss(model, batch, data_parallel, state["global_step"])
                bad = accelerator.reduce((~torch.isfinite(loss.detach())).float(), "sum") > 0
                if bad:  # every process skips together, or DDP would hang
                    nonfinite += 1
                    logger.warning("step %d: non-finite loss (%s), step skipped (%d in a row)",
                                   state["global_step"], loss.item(), nonfinite)
                    optimizer.zero_grad()
                    if nonfinite >= args.max_nonfinite_steps:
                        raise RuntimeError(
                            f"{nonfinite} non-finite losses in a row at step "
                            f"{state['global_step']}: training diverged. Lower --learning_rate, "
                            "try --mixed_precision no, or check the data with "
                            "`python -m agen_hf.data.validate`")
                    continue
                nonfinite = 0
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                if accelerator.sync_gradients:
                    factor = lr_factor(args.lr_scheduler, state["global_step"], max_steps,
                                       steps_per_epoch, args.lr_decay_epochs,
                                       args.warmup_steps, restart_at=args.lr_restart_at)
                    for group, base in zip(optimizer.param_groups, base_lrs):
                        group["lr"] = base * factor
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            state["global_step"] += 1
            step = state["global_step"]
            # float64 so that the logged total is as exact as its terms
            values = accelerator.reduce(torch.stack([t.detach().double() for t in
                                                     terms.values()]), "mean").tolist()
            record = {"step": step, "epoch": epoch, "loss": sum(values),
                      **dict(zip(terms, values)),
                      "lr": optimizer.param_groups[0]["lr"],
                      **(log_extras(final) if log_extras else {})}
            if accelerator.is_main_process:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.3f}")
            if args.with_tracking and step % args.logging_steps == 0:
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"},
                                step=step)
            if args.checkpointing_steps and step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, step, dict(state),
                                args.checkpoints_total_limit)
            if step >= max_steps:
                break
        end_of_epoch = state["batches_in_epoch"] >= len(train_loader)
        if end_of_epoch:
            state.update(epoch=epoch + 1, batches_in_epoch=0)
            if not (args.checkpointing_steps and state["global_step"] %
                    args.checkpointing_steps == 0):
                save_checkpoint(accelerator, output_dir, state["global_step"], dict(state),
                                args.checkpoints_total_limit)
            if args.eval_every_epochs and (epoch + 1) % args.eval_every_epochs == 0 and \
                    state["global_step"] < max_steps:
                metrics = evaluate(epoch)
        if state["global_step"] >= max_steps:
            break
    if progress is not None:
        progress.close()
    metrics = evaluate(state["epoch"])
    elapsed = time.time() - started

    accelerator.wait_for_everyone()
    result = {"val_mean_iou": metrics["mean_iou"], "val_mean_accuracy": metrics["mean_accuracy"],
              "val_overall_accuracy": metrics["overall_accuracy"],
              "val_per_category_iou": {config.id2label[i]: float(v) for i, v in
                                       enumerate(metrics["per_category_iou"])},
              "steps": state["global_step"], "train_seconds": elapsed,
              **(result_extras or {})}
    if accelerator.is_main_process:
        card = model_card(metrics) if model_card else {}
        final.save_pretrained(output_dir, model_card_kwargs=card)
        print(f"val mIoU ({result.get('supervision', 'full')} supervision): "
              f"{100 * metrics['mean_iou']:.2f}% after {state['global_step']} steps; model saved "
              f"to {output_dir}")
        if args.push_to_hub:
            try:
                url = final.push_to_hub(args.hub_model_id, token=args.hub_token,
                                        model_card_kwargs=card)
                print(f"pushed to {url}")
            except Exception as e:  # the local model is already saved: report and go on
                logger.error("push to the Hub failed (%s: %s); the model is saved in %s",
                             type(e).__name__, e, output_dir)
                result["push_error"] = str(e)
        (output_dir / "eval_results.json").write_text(json.dumps(result, indent=2))
    if args.with_tracking:
        accelerator.end_training()
    return result


