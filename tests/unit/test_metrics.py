import numpy as np
import pytest
import torch
from reference_metrics import hub_mean_iou

from agen_hf.metrics import MEAN_IOU, StreamingMeanIoU


def assert_same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(
            np.asarray(a[k], dtype=float),
            np.asarray(b[k], dtype=float),
            rtol=1e-12,
            atol=0,
            equal_nan=True,
            err_msg=k,
        )


def random_maps(seed, n=5, labels=6, shape=(9, 11)):
    rng = np.random.default_rng(seed)
    preds = [rng.integers(0, labels + 2, shape) for _ in range(n)]  # some out of range
    refs = [
        np.where(rng.random(shape) < 0.2, 255, rng.integers(0, labels - 1, shape)) for _ in range(n)
    ]
    return preds, refs


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"nan_to_num": -1.0},
        {"label_map": {1: 3, 3: 0}},
        {"reduce_labels": True},
        {"label_map": {2: 4}, "reduce_labels": True, "nan_to_num": 0.0},
    ],
)
def test_equals_the_hub_algorithm(options):
    preds, refs = random_maps(0)
    metric = StreamingMeanIoU(6, 255, options.get("label_map"), options.get("reduce_labels", False))
    for p, r in zip(preds, refs):
        metric.update(p, r)
    expected = hub_mean_iou(preds, [r.copy() for r in refs], 6, 255, **options)
    assert_same(metric.compute(options.get("nan_to_num")), expected)


def test_shards_sum_to_one_pass_and_batches_equal_single_maps():
    preds, refs = random_maps(1, n=6)
    one = StreamingMeanIoU(6)
    one.update(np.stack(preds), torch.from_numpy(np.stack(refs)))
    a, b = StreamingMeanIoU(6), StreamingMeanIoU(6)
    for p, r in zip(preds[:3], refs[:3]):
        a.update(torch.from_numpy(p), r)
    for p, r in zip(preds[3:], refs[3:]):
        b.update(p, r)
    assert torch.equal(a.confusion + b.confusion, one.confusion)
    assert_same(one.compute(), hub_mean_iou(preds, refs, 6, 255))


def test_errors():
    with pytest.raises(ValueError, match="differ in size"):
        StreamingMeanIoU(3).update(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="num_labels"):
        StreamingMeanIoU(1)


def test_evaluate_loads_it_offline(monkeypatch, tmp_path):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    metric = evaluate.load(MEAN_IOU)
    preds, refs = random_maps(2, n=3)
    preds = [np.clip(p, 0, 5) for p in preds]
    out = metric.compute(
        predictions=preds, references=refs, num_labels=6, ignore_index=255, reduce_labels=False
    )
    assert_same(out, hub_mean_iou(preds, refs, 6, 255))


def test_eight_bit_maps_take_the_same_numbers():
    preds, refs = random_maps(3, n=4, labels=21, shape=(20, 30))
    preds = [np.clip(p, 0, 255).astype(np.uint8) for p in preds]
    preds[0][0, :5] = 250  # out of range predictions
    fast, slow = StreamingMeanIoU(21), StreamingMeanIoU(21)
    for p, r in zip(preds, refs):
        fast.update(p, r.astype(np.uint8))
        slow.update(p.astype(np.int64), r.astype(np.int64))
    assert torch.equal(fast.confusion, slow.confusion)
    assert_same(fast.compute(), hub_mean_iou(preds, refs, 21, 255))


def test_iou_table_in_the_layout_of_table_4():
    from agen_hf.metrics.report import iou_table

    iou = np.full(21, np.nan)
    iou[0], iou[20] = 0.881, 0.56
    lines = iou_table(iou, 0.7205).splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]][:3] == ["Method", "bkg", "plane"]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["AGEN", "88.1"] + ["-"] * 19 + [
        "56.0",
        "72.0",
    ]
    custom = iou_table([0.5, 0.25], 0.375, ["sky", "road"], row_name="run 3").splitlines()
    assert custom[0].split("|")[2].strip() == "sky" and "run 3" in custom[2]
    with pytest.raises(ValueError, match="2 IoUs for 21 classes"):
        iou_table([0.5, 0.25], 0.375)


def test_81_classes_read_down_four_column_pairs():
    """COCO's 81 IoUs: 21 lines of 4 (class, IoU) pairs, in label order down each pair."""
    from agen_hf.data import COCO_CLASS_NAMES
    from agen_hf.metrics.report import iou_table

    names = ["background", *COCO_CLASS_NAMES]
    iou = np.arange(81) / 100
    iou[3] = np.nan
    lines = iou_table(iou, 0.4, names, row_name="AGEN").splitlines()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:23]]
    assert len(rows) == 21 and lines[-1] == "AGEN mIoU: 40.0"
    assert rows[0][:4] == ["background", "0.0", names[21], "21.0"]  # 21 rows a column
    column = [r[k] for k in range(0, 8, 2) for r in rows if r[k]]
    assert column == names  # every class once, in order
    values = [r[k + 1] for k in range(0, 8, 2) for r in rows if r[k]]
    assert values[3] == "-" and values[80] == "80.0" and values[21] == "21.0"


def test_eight_bit_pair_counts_mix_with_other_updates_and_fold_when_read():
    preds, refs = random_maps(4, n=4, labels=21, shape=(12, 13))
    for ignore in (255, 3):
        mixed, slow = StreamingMeanIoU(21, ignore), StreamingMeanIoU(21, ignore)
        for k, (p, r) in enumerate(zip(preds, refs)):
            p8, r8 = np.clip(p, 0, 255).astype(np.uint8), r.astype(np.uint8)
            mixed.update(*((p8, r8) if k % 2 else (p8.astype(np.int32), r8)))
            slow.update(p8.astype(np.int64), r8.astype(np.int64))
        assert torch.equal(mixed.confusion, slow.confusion)
    mixed.update(preds[0].astype(np.uint8), refs[0].astype(np.uint8))
    mixed.confusion = slow.confusion.clone()  # an assignment (e.g. a cross-process sum) wins
    assert torch.equal(mixed.confusion, slow.confusion)
    mixed.update(preds[0].astype(np.uint8), refs[0].astype(np.uint8))
    mixed.reset()
    assert mixed.confusion.sum() == 0
    with pytest.raises(ValueError, match="confusion: expected shape \\(22, 22\\)"):
        mixed.confusion = torch.zeros(3, 3)


def loop_confusion(preds, refs, n, ignore):
    """The confusion matrix pixel by pixel (last row/column: out of range)."""
    conf = torch.zeros(n + 1, n + 1, dtype=torch.int64)
    for p, r in zip(preds, refs):
        for pv, rv in zip(np.ravel(p).tolist(), np.ravel(r).tolist()):
            if rv == ignore:
                continue
            conf[rv if 0 <= rv < n else n, pv if 0 <= pv < n else n] += 1
    return conf


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.int8])
def test_argmax_maps_that_fit_in_a_byte_take_the_byte_pair_path(dtype):
    """``logits.argmax(1)`` is int64; its values fit in 8 bits, so it is counted
    by byte pairs like a uint8 PNG (the fast path), with the same numbers."""
    preds, refs = random_maps(5, n=3, labels=21, shape=(10, 12))
    metric = StreamingMeanIoU(21)
    for p, r in zip(preds, refs):
        metric.update(torch.from_numpy(p).to(dtype), torch.from_numpy(r))
    assert metric._pairs_pending  # folded only when read
    assert torch.equal(metric.confusion, loop_confusion(preds, refs, 21, 255))
    assert_same(metric.compute(), hub_mean_iou(preds, refs, 21, 255))


def test_values_outside_a_byte_take_the_general_path_with_the_same_numbers():
    preds, refs = random_maps(6, n=3, labels=21, shape=(10, 12))
    preds[0][0, :3] = [300, -1, 70000]
    preds[1] = preds[1].astype(np.int64)
    preds[1][0, 0] = 2**40 + 5  # 5 in its lowest 32 bits: no byte pair
    metric = StreamingMeanIoU(21)
    for p, r in zip(preds, refs):
        metric.update(p, r)
    assert torch.equal(metric.confusion, loop_confusion(preds, refs, 21, 255))
    assert_same(metric.compute(), hub_mean_iou(preds, refs, 21, 255))
