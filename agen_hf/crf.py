"""Fully connected CRF (Krähenbühl & Koltun) for the boundary loss (eq. 14) and post-processing.

Two backends of the same model (unary ``-log p``, Potts pairwise term with a Gaussian kernel on
position and a bilateral kernel on position and colour, symmetric kernel normalisation, mean
field): ``"pydensecrf"`` (the permutohedral-lattice filter of the reference C++ code, from the
``pydensecrf2`` package) and ``"torch"`` (an exact N x N Gaussian kernel in pure torch, for the
low resolutions of the boundary loss on machines without pydensecrf).
Both are restricted to the classes a mask marks present: the others get probability 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
        return CrfParams(self.iterations, self.pos_xy_std / factor, self.pos_w,
                         self.bi_xy_std / factor, self.bi_rgb_std, self.bi_w)


def pydensecrf_available() -> bool:
    return _dcrf is not None


def _require_pydensecrf() -> None:
    if _dcrf is None:
        raise ImportError(
            "the 'pydensecrf' CRF backend needs pydensecrf: pip install 'agen_hf[crf]' (it "
            "installs pydensecrf2), or choose boundary_crf='torch' in AgenConfig")


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
    crf.addPairwiseBilateral(sxy=params.bi_xy_std, srgb=params.bi_rgb_std,
                             rgbim=np.ascontiguousarray(image, dtype=np.uint8),
                             compat=params.bi_w)
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
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=probs.device),
                            torch.arange(w, dtype=torch.float32, device=probs.device),
                            indexing="ij")
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


def crf_refine(images: torch.Tensor, probs: torch.Tensor, present: torch.Tensor,
               params: CrfParams, backend: str) -> torch.Tensor:
    """CRF output ``R`` for a batch, restricted to the present classes. No gradient.

    images: (B, 3, H, W) RGB in 0..255 at the resolution of ``probs`` (B, K, H, W);
    present: (B, K) bool, class 0 (background) included by the caller. Probabilities of the
    present classes are renormalised and refined; absent classes get 0.
    """
    if backend not in ("pydensecrf", "torch"):
        raise ValueError(f"crf backend: must be 'pydensecrf' or 'torch', got {backend!r}")
    if backend == "pydensecrf":
        _require_pydensecrf()
    out = torch.zeros_like(probs, dtype=torch.float32)
    with torch.no_grad():
        for i in range(probs.shape[0]):
            idx = present[i].nonzero().flatten()
            p = probs[i, idx].float()
            p = p / p.sum(dim=0, keepdim=True).clamp_min(_MIN_PROB)
            if backend == "torch":
                q = dense_crf_torch(images[i], p, params)
            else:
                image = images[i].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0)
                q = torch.from_numpy(dense_crf_pydensecrf(
                    image.cpu().numpy(), p.cpu().numpy(), params)).to(probs.device)
            out[i, idx] = q
    return out
