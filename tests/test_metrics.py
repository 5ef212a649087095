import numpy as np
import pytest
import torch

from agen_hf.metrics import StreamingMeanIoU


def slow_iou(preds, refs, n, ignore=255):
    inter, union = np.zeros(n), np.zeros(n)
    for p, r in zip(preds, refs):
        for pv, rv in zip(p.flatten().tolist(), r.flatten().tolist()):
            if rv == ignore:
                continue
            for c in range(n):
                inter[c] += (pv == c) and (rv == c)
                union[c] += (pv == c) or (rv == c)
    with np.errstate(invalid="ignore"):
        return inter / union


def test_matches_a_slow_reference_and_shards_sum():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (6, 7)) for _ in range(4)]
    refs = [np.where(rng.random((6, 7)) < 0.2, 255, rng.integers(0, 4, (6, 7))) for _ in range(4)]
    one = StreamingMeanIoU(6)
    one.update(np.stack(preds), torch.from_numpy(np.stack(refs)))
    expected = slow_iou(preds, refs, 6)
    np.testing.assert_allclose(one.compute()["per_category_iou"], expected)
    assert np.isnan(one.compute()["per_category_iou"][5])  # absent everywhere
    assert one.compute()["mean_iou"] == pytest.approx(np.nanmean(expected))
    a, b = StreamingMeanIoU(6), StreamingMeanIoU(6)
    for p, r in zip(preds[:2], refs[:2]):
        a.update(p, r)
    for p, r in zip(preds[2:], refs[2:]):
        b.update(torch.from_numpy(p), r)
    assert torch.equal(a.confusion + b.confusion, one.confusion)


def test_errors():
    m = StreamingMeanIoU(3)
    with pytest.raises(ValueError, match="differ in size"):
        m.update(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="outside 0..2"):
        m.update(np.zeros((2, 2)), np.full((2, 2), 7))
    with pytest.raises(ValueError, match="num_labels"):
        StreamingMeanIoU(1)
