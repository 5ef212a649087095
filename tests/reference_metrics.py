"""The Hub's ``mean_iou`` algorithm written out (a histogram per image): the slow, obvious
reference the streaming metric is checked against."""

import numpy as np


def hub_mean_iou(
    preds, refs, num_labels, ignore_index, nan_to_num=None, label_map=None, reduce_labels=False
):
    """The Hub ``mean_iou`` algorithm, written out: a histogram per image."""
    totals = np.zeros((4, num_labels))
    for pred, label in zip(preds, refs):
        pred, label = np.array(pred), np.array(label)
        if label_map is not None:
            for old, new in label_map.items():
                label[label == old] = new
        if reduce_labels:
            label[label == 0] = 255
            label = label - 1
            label[label == 254] = 255
        mask = np.not_equal(label, ignore_index)
        pred, label = pred[mask], label[mask]
        inter = pred[pred == label]
        hist = lambda x: np.histogram(x, bins=num_labels, range=(0, num_labels - 1))[0]
        ai, ap, al = hist(inter), hist(pred), hist(label)
        totals += np.stack([ai, ap + al - ai, ap, al])
    ai, au, ap, al = totals
    with np.errstate(divide="ignore", invalid="ignore"):
        iou, acc = ai / au, ai / al
        out = {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(acc),
            "overall_accuracy": ai.sum() / al.sum(),
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }
    if nan_to_num is not None:
        out = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in out.items()}
    return out
