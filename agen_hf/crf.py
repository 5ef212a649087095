"""Fully connected CRF (Krähenbühl & Koltun) for the boundary loss (eq. 14) and post-processing.

Two backends of the same model (unary ``-log p``, Potts pairwise term with a Gaussian kernel on
position and a bilateral kernel on position and colour, symmetric kernel normalisation, mean
field): ``"pydensecrf"`` (the permutohedral-lattice filter of the reference C++ code, from the
``pydensecrf2`` package) and ``"torch"`` (an exact N x N Gaussian kernel in pure torch, for the
low resolutions of the boundary loss on machines without pydensecrf).
Both are restricted to the classes a mask marks present: the others get probability 0.

Post-processing (:func:`crf_segment`, :class:`CrfPool`) refines full-resolution predictions
with pydensecrf over a process pool, restricted to background + the classes the prediction
contains. Default kernels are :class:`CrfParams`' (SEC/DSRG, and PSA's ``crf_inference``
used by SEAM/RRM for post-processing: 10 iterations, Gaussian 3 px / weight 3, bilateral
80 px / 13 colour levels / weight 10); DeepLab's VOC values are
``CrfParams(10, 1, 3, 67, 3, 4)`` (as in deeplab-pytorch's VOC config).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

logger = logging.getLogger(__name__)

try:  # pydensecrf2 installs as `pydensecrf`
    import pydensecrf.densecrf as _dcrf
except ImportError:  # pragma: no cover - exercised on machines without the crf extra
    _dcrf = None

_MIN_PROB = 1e-8


@dataclass(frozen=True)
class CrfParams:
    """Kernel parameters in image pixels (defaults: SEC/DSRG's boundary CRF)."""

    iterations: int = 10
    pos_xy_std: float = 3.0
    pos_w: float = 3.0
    bi_xy_std: float = 80.0
    bi_rgb_std: float = 13.0
    bi_w: float = 10.0

    def scaled(self, factor: float) -> "CrfParams":
        """The same kernels for an image downsampled by ``factor`` (spatial stds / factor)."""
        return CrfParams(
            self.iterations,
            self.pos_xy_std / factor,
            self.pos_w,
            self.bi_xy_std / factor,
            self.bi_rgb_std,
            self.bi_w,
        )


def pydensecrf_available() -> bool:
    return _dcrf is not None


def _require_pydensecrf() -> None:
    if _dcrf is None:
        raise ImportError(
            "the 'pydensecrf' CRF backend needs pydensecrf: pip install 'agen_hf[crf]' (it "
            "installs pydensecrf2), or choose boundary_crf='torch' in AgenConfig"
        )


def dense_crf_pydensecrf(image: np.ndarray, probs: np.ndarray, params: CrfParams) -> np.ndarray:
    """Mean-field inference with pydensecrf. image (H, W, 3) uint8 RGB; probs (K, H, W) with
    K >= 1 classes summing to 1 per pixel. Returns Q (K, H, W) float32."""
    _require_pydensecrf()
    k, h, w = probs.shape
    if k == 1:
        return np.ones_like(probs, dtype=np.float32)
    crf = _dcrf.DenseCRF2D(w, h, k)
    unary = -np.log(np.clip(probs, _MIN_PROB, 1.0)).reshape(k, -1).astype(np.float32)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.pos_xy_std, compat=params.pos_w)
    crf.addPairwiseBilateral(
        sxy=params.bi_xy_std,
        srgb=params.bi_rgb_std,
        rgbim=np.ascontiguousarray(image, dtype=np.uint8),
        compat=params.bi_w,
    )
    q = crf.inference(params.iterations)
    return np.asarray(q, dtype=np.float32).reshape(k, h, w)


def _gaussian_kernel(features: torch.Tensor) -> torch.Tensor:
    """exp(-|f_i - f_j|^2 / 2) for features (N, D), symmetrically normalised (N, N)."""
    kernel = torch.exp(-0.5 * torch.cdist(features, features).square())
    norm = kernel.sum(dim=1).rsqrt()
    return norm[:, None] * kernel * norm[None, :]


def dense_crf_torch(image: torch.Tensor, probs: torch.Tensor, params: CrfParams) -> torch.Tensor:
    """The same mean field with exact Gaussian kernels. image (3, H, W) in 0..255; probs
    (K, H, W). Memory is O((H*W)^2): meant for logits-resolution maps (41 x 41 at 321^2)."""
    k, h, w = probs.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=probs.device),
        torch.arange(w, dtype=torch.float32, device=probs.device),
        indexing="ij",
    )
    pos = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    rgb = image.float().reshape(3, -1).t()
    smooth = _gaussian_kernel(pos / params.pos_xy_std)
    appearance = _gaussian_kernel(torch.cat([pos / params.bi_xy_std, rgb / params.bi_rgb_std], 1))
    kernel = params.pos_w * smooth + params.bi_w * appearance
    log_unary = probs.float().clamp(_MIN_PROB, 1.0).log().reshape(k, -1).t()  # (N, K)
    q = torch.softmax(log_unary, dim=1)
    for _ in range(params.iterations):
        q = torch.softmax(log_unary + kernel @ q, dim=1)
    return q.t().reshape(k, h, w)


_BATCH_POOL: tuple[int, ProcessPoolExecutor] | None = None


def batch_pool(processes: int) -> ProcessPoolExecutor:
    """The process pool that :func:`crf_refine` spreads a batch's images over (pydensecrf holds
    the GIL, so threads would not help): ``processes`` spawned workers, created on first use
    and kept for the process's life (a different count replaces it)."""
    global _BATCH_POOL
    if _BATCH_POOL is None or _BATCH_POOL[0] != processes:
        if _BATCH_POOL is not None:
            _BATCH_POOL[1].shutdown(cancel_futures=True)
        _BATCH_POOL = (
            processes,
            ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")),
        )
    return _BATCH_POOL[1]


def crf_refine(
    images: torch.Tensor,
    probs: torch.Tensor,
    present: torch.Tensor,
    params: CrfParams,
    backend: str,
    processes: int = 0,
) -> torch.Tensor:
    """CRF output ``R`` for a batch, restricted to the present classes. No gradient.

    images: (B, 3, H, W) RGB in 0..255 at the resolution of ``probs`` (B, K, H, W);
    present: (B, K) bool, class 0 (background) included by the caller. Probabilities of the
    present classes are renormalised and refined; absent classes get 0. With ``processes``
    (pydensecrf only), the images run in parallel over :func:`batch_pool` (the same numbers:
    the same function on the same inputs), so that on a fast GPU the CRF does not dominate
    the step.
    """
    if backend not in ("pydensecrf", "torch"):
        raise ValueError(f"crf backend: must be 'pydensecrf' or 'torch', got {backend!r}")
    if processes < 0:
        raise ValueError(f"crf_refine: processes must be >= 0, got {processes}")
    if backend == "pydensecrf":
        _require_pydensecrf()
    pool = batch_pool(processes) if processes and backend == "pydensecrf" else None
    out = torch.zeros_like(probs, dtype=torch.float32)
    with torch.no_grad():
        jobs = []
        for i in range(probs.shape[0]):
            idx = present[i].nonzero().flatten()
            p = probs[i, idx].float()
            p = p / p.sum(dim=0, keepdim=True).clamp_min(_MIN_PROB)
            if backend == "torch":
                out[i, idx] = dense_crf_torch(images[i], p, params)
                continue
            image = images[i].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0)
            job = (image.cpu().numpy(), p.cpu().numpy(), params)
            jobs.append(
                (
                    i,
                    idx,
                    pool.submit(dense_crf_pydensecrf, *job) if pool else dense_crf_pydensecrf(*job),
                )
            )
        for i, idx, q in jobs:
            q = q.result() if pool else q
            out[i, idx] = torch.from_numpy(q).to(probs.device)
    return out


def crf_segment(
    image: np.ndarray, probs: np.ndarray, classes: np.ndarray, params: CrfParams
) -> np.ndarray:
    """Full-resolution post-processing of one image: dense CRF over the ``classes`` whose
    probabilities ``probs`` (k, H, W) are given (renormalised here), then argmax. image
    (H, W, 3) uint8. Returns (H, W) uint8 class indices drawn from ``classes``."""
    p = probs.astype(np.float32, copy=False)
    p = p / np.maximum(p.sum(axis=0, keepdims=True), _MIN_PROB)
    q = dense_crf_pydensecrf(image, p, params)
    return np.asarray(classes, dtype=np.uint8)[q.argmax(axis=0)]


def present_classes(label_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """Background plus every class a (H, W) prediction contains, sorted."""
    values = np.unique(np.asarray(label_map))
    return np.union1d(values, [0]).astype(np.int64)


class CrfError(RuntimeError):
    """A CRF job that failed twice: its worker died again, or it ran past the time limit."""


class CrfPool:
    """Runs :func:`crf_segment` for a stream of images over ``processes`` worker processes
    (0: in this process). Results come back in submission order, each with the ``tag`` it was
    submitted with; at most ``max_pending`` images wait at a time, so memory stays bounded.

    Workers are spawned, not forked: the parent holds torch's OpenMP threads, and a forked
    child that touches OpenMP can hang.

    A worker that dies (the OOM killer) or an image that takes more than ``timeout`` seconds
    (a stuck worker) costs the pool its workers: they are replaced, and every unfinished image
    is submitted again, once; ``workers_replaced`` counts it (the recipes exit 3 when it is
    not 0). The second failure of one image raises :class:`CrfError` naming its tag."""

    def __init__(
        self,
        params: CrfParams = CrfParams(),
        processes: int = 0,
        max_pending: int | None = None,
        timeout: float | None = 600.0,
    ) -> None:
        _require_pydensecrf()
        if processes < 0:
            raise ValueError(f"processes: must be >= 0, got {processes}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout: must be > 0 seconds or None, got {timeout}")
        self.params, self.processes, self.timeout = params, processes, timeout
        self.max_pending = max_pending or max(1, 2 * processes)
        self.workers_replaced = 0
        self._pool = self._new_pool() if processes else None
        self._pending: deque[list] = deque()  # [tag, future, job arguments, attempts]

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"))

    def refine(
        self,
        image: np.ndarray,
        label_map: torch.Tensor,
        class_probs: Callable[[np.ndarray], torch.Tensor],
        tag: Any = None,
    ) -> list[tuple[Any, np.ndarray]]:
        """Queue a prediction for refinement: the CRF over background + the classes of its
        argmax ``label_map`` (H, W), from their probabilities ``class_probs(classes)`` (k, H, W) at
        the image's size (computed for those classes only). The one post-processing path of
        evaluation (:func:`agen_hf.engine.evaluate_segmentation`) and inference
        (:class:`agen_hf.inference.SegmentationStream`). Returns the results finished so far."""
        classes = present_classes(label_map)
        return self.submit(image, class_probs(classes), classes, tag)

    def submit(
        self,
        image: np.ndarray,
        probs: torch.Tensor | np.ndarray,
        classes: np.ndarray,
        tag: Any = None,
    ) -> list[tuple[Any, np.ndarray]]:
        """Queue one image (H, W, 3) uint8 with the probabilities ``probs`` (k, H, W) of the
        ``classes`` (k,) the CRF is restricted to (see :func:`present_classes`). Returns the
        results finished so far."""
        restricted = (
            probs.float().cpu().numpy()
            if torch.is_tensor(probs)
            else np.asarray(probs, dtype=np.float32)
        )
        job = (image, restricted, classes, self.params)
        if self._pool is None:
            return [(tag, crf_segment(*job))]
        self._pending.append([tag, self._pool.submit(crf_segment, *job), job, 1])
        done = []
        while self._pending and (
            len(self._pending) > self.max_pending or self._pending[0][1].done()
        ):
            done.append(self._next())
        return done

    def finish(self) -> list[tuple[Any, np.ndarray]]:
        """Wait for every queued image; return their results in submission order."""
        done = []
        while self._pending:
            done.append(self._next())
        return done

    def _next(self) -> tuple[Any, np.ndarray]:
        """The oldest image's result, waiting at most ``timeout`` for it; a dead or stuck
        worker replaces the pool and resubmits what was unfinished."""
        while True:
            tag, future, _, attempts = self._pending[0]
            try:
                result = future.result(timeout=self.timeout)
            except BrokenProcessPool:
                problem = "its CRF worker process died (killed by the OOM killer?)"
            except FutureTimeout:
                problem = f"its CRF took more than {self.timeout:g} s"
            else:
                self._pending.popleft()
                return tag, result
            if attempts >= 2:
                self._kill_workers()
                self.close()
                raise CrfError(
                    f"CRF of {tag}: {problem}, twice; try fewer --crf_processes "
                    "(memory) or check the image"
                )
            logger.warning(
                "CRF of %s: %s; replacing the workers and resubmitting %d images",
                tag,
                problem,
                len(self._pending),
            )
            self._replace_workers()

    def _kill_workers(self) -> None:
        for process in list((getattr(self._pool, "_processes", None) or {}).values()):
            process.kill()  # a stuck worker would never return

    def _replace_workers(self) -> None:
        self._kill_workers()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self.workers_replaced += 1
        for entry in self._pending:
            entry[1] = self._pool.submit(crf_segment, *entry[2])
            entry[3] += 1

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "CrfPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
