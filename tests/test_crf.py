"""Full-resolution dense-CRF post-processing (the boundary-loss CRF is in test_losses.py)."""

import numpy as np
import pytest
import torch

from agen_hf.crf import CrfParams, CrfPool, crf_segment, present_classes

pytest.importorskip("pydensecrf.densecrf")


def two_region_case(seed, h=30, w=40):
    """A left/right image whose probabilities are noisy and blurred across the edge."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, w // 2:] = 255
    probs = np.full((3, h, w), 0.05, np.float32)
    probs[1, :, : w // 2 + 4] = 0.9  # class 1 spills 4 px over the edge
    probs[2, :, w // 2 + 4:] = 0.9
    probs += rng.uniform(0, 0.3, probs.shape).astype(np.float32)
    return image, probs / probs.sum(0, keepdims=True)


def test_crf_segment_snaps_to_the_colour_edge_within_the_given_classes():
    image, probs = two_region_case(0)
    before = probs.argmax(0)
    classes = np.array([0, 7, 12])
    labels = crf_segment(image, probs, classes, CrfParams())
    assert labels.dtype == np.uint8 and labels.shape == (30, 40)
    assert set(np.unique(labels)) <= {0, 7, 12}
    assert (before[:, :24] == 1).all()  # the spill before the CRF ...
    assert (labels[:, :20] == 7).all() and (labels[:, 20:] == 12).all()  # ... gone after it


def test_present_classes_always_include_background():
    assert present_classes(torch.tensor([[3, 3], [5, 3]])).tolist() == [0, 3, 5]
    assert present_classes(np.zeros((2, 2), np.uint8)).tolist() == [0]


def test_pool_returns_the_serial_results_in_submission_order():
    cases = [two_region_case(s, 20 + 2 * s, 30) for s in range(5)]
    classes = np.array([0, 1, 2])
    with CrfPool(CrfParams(iterations=5), processes=0) as serial:
        expected = [serial.submit(im, torch.from_numpy(p), classes, tag=i)[0] for i, (im, p)
                    in enumerate(cases)]
    got = []
    with CrfPool(CrfParams(iterations=5), processes=2, max_pending=2) as pool:
        for i, (im, p) in enumerate(cases):
            got += pool.submit(im, p, classes, tag=i)
            assert len(pool._pending) <= 2
        got += pool.finish()
    assert [t for t, _ in got] == list(range(5))
    for (_, a), (_, b) in zip(got, expected):
        assert np.array_equal(a, b)
