"""How hard is the embedded synthetic dataset? Train branch A alone (the plain CAM
classifier of eq. 1-3, a stand-in until the training recipe lands) on synthetic images and
score its CAM pseudo labels against the exact masks.

    python bench/synthetic_cam.py [--train 2000] [--steps 1500] [--image_size 96]

Prints and writes JSON: classification F1, the mIoU of dense CAM labels (argmax of the
background map of eq. 4 and the CAMs of the image's classes), and of the seeds (eq. 2-4 with
δ = 0.3) with their foreground coverage.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from agen_hf import AgenConfig, AgenModel
from agen_hf.cam import dense_pseudo_labels, pseudo_labels
from agen_hf.data import make_synthetic
from agen_hf.data.transforms import collate, eval_transform, train_transform, with_transforms
from agen_hf.metrics import StreamingMeanIoU


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=300)
    p.add_argument("--image_size", type=int, default=96)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="synthetic_cam.json")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    size = args.image_size

    t0 = time.time()
    train = make_synthetic(args.train, seed=args.seed, image_size=size)
    val = make_synthetic(args.val, seed=args.seed + 1000, image_size=size)
    print(f"data: {args.train} + {args.val} images of {size}^2 in {time.time() - t0:.1f}s")
    train = with_transforms(train, train_transform(size, (int(size * 0.9), int(size * 1.25))))
    val = with_transforms(val, eval_transform())
    loader = DataLoader(
        train,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=1,
        drop_last=True,
        persistent_workers=True,
    )

    config = AgenConfig.tiny(
        agm_stages=(),
        coam_stages=(),
        use_boundary_loss=False,
        vgg_channels=(16, 32, 64, 128, 128),
        vgg_depths=(1, 1, 2, 2, 2),
        fc_channels=128,
    )
    model = AgenModel(config)
    params = list(model.stem.parameters()) + list(model.branch_a.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    step, t0 = 0, time.time()
    while step < args.steps:
        for batch in loader:
            out = model(batch["pixel_values"], batch["labels"])
            loss = out.loss_terms["cls_A"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % 100 == 0:
                print(f"step {step} cls loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
            if step >= args.steps:
                break

    model.eval()
    dense, seeds_metric = StreamingMeanIoU(21), StreamingMeanIoU(21)
    tp = fp = fn = covered = fg_pixels = n_assigned = n_pixels = 0
    with torch.no_grad():
        for i in range(len(val)):
            s = collate([val[i]])
            out = model(s["pixel_values"])
            maps = out.class_maps["A"]
            labels, mask = s["labels"], s["mask"]
            pred = (out.class_logits["A"] > 0).float()
            tp += (pred * labels).sum().item()
            fp += (pred * (1 - labels)).sum().item()
            fn += ((1 - pred) * labels).sum().item()
            dense.update(dense_pseudo_labels(maps, labels, mask.shape[-2:], config.cam_alpha), mask)
            seeds = pseudo_labels(
                maps, labels, mask.shape[-2:], config.cam_alpha, config.threshold_a
            )
            assigned = seeds != 255
            seeds_metric.update(seeds, torch.where(assigned, mask, torch.full_like(mask, 255)))
            n_assigned += assigned.sum().item()
            n_pixels += assigned.numel()
            gt_fg = (mask > 0) & (mask != 255)
            covered += (gt_fg & (seeds == mask)).sum().item()
            fg_pixels += gt_fg.sum().item()
    result = {
        "train_images": args.train,
        "val_images": args.val,
        "image_size": size,
        "steps": args.steps,
        "train_seconds": round(time.time() - t0, 1),
        "classification_f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "dense_cam_miou": dense.compute()["mean_iou"],
        "seed_miou_on_assigned_pixels": seeds_metric.compute()["mean_iou"],
        "seed_fraction_assigned": n_assigned / max(n_pixels, 1),
        "seed_foreground_coverage": covered / max(fg_pixels, 1),
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
