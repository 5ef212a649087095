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
    image[:, w // 2 :] = 255
    probs = np.full((3, h, w), 0.05, np.float32)
    probs[1, :, : w // 2 + 4] = 0.9  # class 1 spills 4 px over the edge
    probs[2, :, w // 2 + 4 :] = 0.9
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
        expected = [
            serial.submit(im, torch.from_numpy(p), classes, tag=i)[0]
            for i, (im, p) in enumerate(cases)
        ]
    got = []
    with CrfPool(CrfParams(iterations=5), processes=2, max_pending=2) as pool:
        for i, (im, p) in enumerate(cases):
            got += pool.submit(im, p, classes, tag=i)
            assert len(pool._pending) <= 2
        got += pool.finish()
    assert [t for t, _ in got] == list(range(5))
    for (_, a), (_, b) in zip(got, expected):
        assert np.array_equal(a, b)


def test_a_killed_worker_is_replaced_and_every_result_still_comes_back():
    """SIGKILL to a CRF worker (as the OOM killer does) mid-stream: the workers are
    replaced, the unfinished images resubmitted, the results equal the serial ones, and the pool
    counts the replacement for the recipe's exit status."""
    import os
    import signal

    cases = [two_region_case(s, 60, 80) for s in range(6)]
    classes = np.array([0, 1, 2])
    params = CrfParams(iterations=200)
    with CrfPool(params, processes=0) as serial:
        expected = [serial.submit(im, p, classes, tag=i)[0][1] for i, (im, p) in enumerate(cases)]
    got = []
    with CrfPool(params, processes=2, max_pending=6) as pool:
        for i, (im, p) in enumerate(cases):
            got += pool.submit(im, p, classes, tag=i)
        pool._pending[0][1].running() or pool._pending[0][1].result()  # workers are up
        os.kill(next(iter(pool._pool._processes)), signal.SIGKILL)
        got += pool.finish()
        assert pool.workers_replaced == 1
    assert [t for t, _ in got] == list(range(6))
    assert all(np.array_equal(a, b) for (_, a), b in zip(got, expected))


def test_an_image_stuck_past_the_time_limit_twice_stops_the_pool_naming_it():
    from agen_hf.crf import CrfError

    image, probs = two_region_case(0, 400, 400)
    with CrfPool(CrfParams(iterations=100_000), processes=1, timeout=0.5) as pool:
        pool.submit(image, probs, np.array([0, 1, 2]), tag="big.jpg")
        with pytest.raises(
            CrfError,
            match=r"CRF of big.jpg: its CRF took more than 0.5 s, "
            r"twice",
        ):
            pool.finish()
        assert pool.workers_replaced == 1


def test_the_boundary_crf_over_worker_processes_equals_the_serial_one():
    """``--boundary_crf_processes`` spreads a batch's images over spawned workers;
    the refined maps, and so the boundary loss (eq. 14), are the serial ones exactly."""
    pytest.importorskip("pydensecrf.densecrf")
    from agen_hf.crf import crf_refine
    from agen_hf.losses import boundary_loss

    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 20, 24, generator=g) * 255
    logits = torch.randn(3, 5, 20, 24, generator=g) * 2
    present = torch.tensor([[1, 1, 0, 1, 0], [1, 0, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    probs = logits.softmax(dim=1)
    serial = crf_refine(images, probs, present, CrfParams(), "pydensecrf")
    pooled = crf_refine(images, probs, present, CrfParams(), "pydensecrf", processes=2)
    assert torch.equal(serial, pooled)
    assert (serial[~present] == 0).all() and (serial[0, 1] != probs[0, 1]).any()
    labels = present[:, 1:].float()
    assert torch.equal(
        boundary_loss(images, logits, labels, CrfParams()),
        boundary_loss(images, logits, labels, CrfParams(), processes=2),
    )
    with pytest.raises(ValueError, match="processes must be >= 0"):
        crf_refine(images, probs, present, CrfParams(), "pydensecrf", processes=-1)
