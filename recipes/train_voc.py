#!/usr/bin/env python
"""Train AGEN end-to-end from image-level labels (section IV.1 of the paper).

    accelerate launch recipes/train_voc.py --voc_root /data/VOCdevkit/VOC2012
    accelerate launch --config_file launch/cpu.yaml recipes/train_voc.py --dataset synthetic \
        --model_config tiny

Defaults are the paper's schedule: SGD (momentum 0.9, weight decay 5e-4), lr 1e-3 for the
ImageNet-initialised backbone and 1e-2 for the AGMs and new heads, divided by 10 every 10
epochs, 35 epochs, batch 15, crops of 321. Every option is a flag and can come from a YAML or
JSON file (``--config run.yaml``; flags on the command line win). The same script runs on one
CPU, one GPU, many GPUs and many nodes: Accelerate does the device work.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from accelerate.utils import DistributedDataParallelKwargs, set_seed  # noqa: E402

from agen_hf import AgenConfig, AgenModel  # noqa: E402
from agen_hf.data import load_voc, make_synthetic  # noqa: E402
from agen_hf.data.transforms import (collate, eval_transform, train_transform,  # noqa: E402
                                     with_transforms)
from agen_hf.engine import (EpochSampler, SeededSamples, evaluate_segmentation,  # noqa: E402
                            load_checkpoint, make_accelerator, remove_partial_checkpoints,
                            resolve_checkpoint, save_checkpoint, shard_loader, step_decay)
from agen_hf.losses import DataParallel, fully_supervised_loss  # noqa: E402

logger = logging.getLogger("train_voc")

PRESETS = {  # Table 1 rows: (agm_stages, coam_stages)
    "baseline": ((), ()), "oa": ((4,), ()), "sc": ((4,), (4,)), "ma": ((3, 4, 5), ()),
    "ac": ((3, 4, 5), (3, 4, 5)),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML or JSON file of flag values (dest names as keys)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["voc", "synthetic"], default=None,
                   help="voc (needs --voc_root or --dataset_name) or the embedded synthetic data")
    g.add_argument("--voc_root", help="local VOCdevkit/VOC2012 (with SegmentationClassAug)")
    g.add_argument("--dataset_name", help="a Hub dataset id in the VOC schema")
    g.add_argument("--train_split", default="train_aug")
    g.add_argument("--eval_split", default="val")
    g.add_argument("--synthetic_size", type=int, default=2000)
    g.add_argument("--synthetic_val_size", type=int, default=200)
    g.add_argument("--synthetic_image_size", type=int, default=128)
    g.add_argument("--crop_size", type=int, default=None,
                   help="training crop (paper: 321; synthetic: its image size)")
    g.add_argument("--scale_range", type=int, nargs=2, default=None,
                   help="long-side range of the random rescale (paper: 321 481)")
    g.add_argument("--skip_bad_samples", action="store_true")
    g.add_argument("--num_workers", type=int, default=2)
    g = p.add_argument_group("model")
    g.add_argument("--model_config", default="paper", help="paper, tiny or a config.json path")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="Table 1 row: baseline, oa (AGM-4), sc (+CoAM-4), ma (AGM-3/4/5), "
                        "ac (+CoAM-3/4/5, the full AGEN)")
    g.add_argument("--boundary_crf", choices=["pydensecrf", "torch"], default=None)
    g.add_argument("--use_boundary_loss", choices=["true", "false"], default=None)
    g.add_argument("--full_supervision", action="store_true",
                   help="train branch B from ground-truth masks: the upper bound")
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
    g.add_argument("--lr_decay_epochs", type=int, default=10)
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
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
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
    if args.dataset is None:
        args.dataset = "voc" if (args.voc_root or args.dataset_name) else "synthetic"
    if args.dataset == "voc" and not (args.voc_root or args.dataset_name):
        parser.error("--dataset voc needs --voc_root DIR or --dataset_name HUB_ID")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    synthetic = args.dataset == "synthetic"
    size = args.synthetic_image_size
    args.crop_size = args.crop_size or (size if synthetic else 321)
    args.scale_range = args.scale_range or ((size, int(size * 1.5)) if synthetic else (321, 481))
    return args


def model_config(args: argparse.Namespace) -> AgenConfig:
    if args.model_config == "paper":
        values = AgenConfig().to_dict()
    elif args.model_config == "tiny":
        values = AgenConfig.tiny().to_dict()
    else:
        values = AgenConfig.from_json_file(args.model_config).to_dict()
    if args.preset:
        values["agm_stages"], values["coam_stages"] = PRESETS[args.preset]
    if args.boundary_crf:
        values["boundary_crf"] = args.boundary_crf
    if args.use_boundary_loss:
        values["use_boundary_loss"] = args.use_boundary_loss == "true"
    return AgenConfig.from_dict(values)


def datasets_for(args: argparse.Namespace):
    if args.dataset == "synthetic":
        return (make_synthetic(args.synthetic_size, seed=args.seed,
                               image_size=args.synthetic_image_size),
                make_synthetic(args.synthetic_val_size, seed=args.seed + 1_000_003,
                               image_size=args.synthetic_image_size))
    source = args.voc_root or args.dataset_name
    return (load_voc(source, args.train_split, skip_bad_samples=args.skip_bad_samples),
            load_voc(source, args.eval_split, skip_bad_samples=args.skip_bad_samples))


def model_card(metrics: dict | None, config: AgenConfig, argv: list[str]) -> dict:
    if metrics:
        names = [config.id2label[i] for i in range(config.num_labels)]
        rows = "\n".join(f"| {n} | {100 * v:.1f} |" for n, v in
                         zip(names, metrics["per_category_iou"]))
        table = f"| class | IoU (%) |\n| --- | --- |\n{rows}\n| **mIoU** | " \
                f"**{100 * metrics['mean_iou']:.1f}** |"
    else:
        table = None
    command = "accelerate launch recipes/train_voc.py " + shlex.join(argv)
    stages = f"AGM {list(config.agm_stages)}, CoAM {list(config.coam_stages)}"
    return {"metrics": table,
            "training": f"{stages}.\n\n```bash\n{command}\n```\n\n```json\n"
                        f"{config.to_json_string()}\n```"}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    accelerator = make_accelerator(
        args.cpu,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=(None if not args.with_tracking else
                  ["tensorboard", "wandb"] if args.report_to == "all" else [args.report_to]),
        project_dir=args.output_dir,
        # full supervision trains branch B alone: the other branches get no gradient
        kwargs_handlers=[DistributedDataParallelKwargs(
            find_unused_parameters=args.full_supervision)],
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed, deterministic=args.deterministic)
    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_partial_checkpoints(output_dir):
            logger.warning("removed %s, left by an interrupted checkpoint save", stale)

    # data
    with accelerator.main_process_first():  # one process builds the caches
        train_ds, val_ds = datasets_for(args)
    train_samples = SeededSamples(with_transforms(
        train_ds, train_transform(args.crop_size, tuple(args.scale_range)),
        args.skip_bad_samples), args.seed)
    sampler = EpochSampler(len(train_samples), args.seed)
    train_loader = DataLoader(train_samples, batch_size=args.per_device_train_batch_size,
                              sampler=sampler, collate_fn=collate, drop_last=True,
                              num_workers=args.num_workers,
                              # its own generator: creating an iterator (e.g. on resume) must
                              # not consume the global RNG that dropout draws from
                              generator=torch.Generator().manual_seed(args.seed),
                              persistent_workers=args.num_workers > 0)
    val_loader = shard_loader(with_transforms(val_ds, eval_transform(), args.skip_bad_samples),
                              accelerator, args.per_device_eval_batch_size, args.num_workers)

    # model and optimizer
    config = model_config(args)
    model = AgenModel(config)
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = model.parameter_groups()
    base_lrs = [args.learning_rate, args.learning_rate * args.head_lr_multiplier]
    param_groups = [
        {"params": [q for q in groups["backbone"] if q.requires_grad], "lr": base_lrs[0]},
        {"params": [q for q in groups["new"] if q.requires_grad], "lr": base_lrs[1]}]
    optimizer = torch.optim.SGD(param_groups, momentum=args.momentum,
                                weight_decay=args.weight_decay) if args.optimizer == "sgd" \
        else torch.optim.AdamW(param_groups, weight_decay=args.weight_decay)
    if args.compile:
        model = torch.compile(model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    unwrapped = accelerator.unwrap_model(model)
    coams = getattr(unwrapped, "_orig_mod", unwrapped).coam

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    if steps_per_epoch == 0:
        raise ValueError(f"the training set ({len(train_samples)} samples) is smaller than one "
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
        accelerator.init_trackers("agen", config={k: v if isinstance(v, (int, float, str, bool))
                                                  else str(v) for k, v in vars(args).items()})
    log_path = output_dir / "train_log.jsonl"
    logger.info("%d samples, %d processes, %d steps/epoch, %d steps, config %s",
                len(train_samples), accelerator.num_processes, steps_per_epoch, max_steps,
                args.model_config)

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
                if args.full_supervision:
                    out = None
                    loss = fully_supervised_loss(predict(batch["pixel_values"]), batch["mask"],
                                                 config.ignore_index, data_parallel)
                    terms = {"seg_B_full": loss}
                else:
                    out = model(batch["pixel_values"], batch["labels"],
                                data_parallel=data_parallel)
                    loss, terms = out.loss, out.loss_terms
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
                    factor = step_decay(state["global_step"], steps_per_epoch,
                                        args.lr_decay_epochs)
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
                      **{f"coam{n}_lambda": m.weight.item() for n, m in coams.items()}}
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
              "supervision": "full" if args.full_supervision else "image-level"}
    if accelerator.is_main_process:
        card = model_card(metrics, config, argv)
        final = getattr(unwrapped, "_orig_mod", unwrapped)
        final.save_pretrained(output_dir, model_card_kwargs=card)
        print(f"val mIoU ({result['supervision']} supervision): "
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


if __name__ == "__main__":
    main()
