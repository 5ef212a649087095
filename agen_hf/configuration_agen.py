"""AgenConfig: every hyper-parameter of AGEN (Zhang et al., CJE 2023) with the paper's value.

Symbols follow the paper: ``C`` foreground classes (``num_labels - 1``), ``∂`` the background
exponent of eq. 4 (``cam_alpha``), ``δ`` the seed thresholds of section IV.1.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from .backbones import check_options, spec_of
from .configuration_utils import SegmentationConfig
from .labels import IGNORE_INDEX, VOC_CLASSES, default_id2label
from .normalization import IMAGENET_MEAN, IMAGENET_STD

STAGES = (3, 4, 5)
# the backbone fields at the paper's values (what a config.json without them means)
PAPER_BACKBONES = {
    "branch_a": "vgg16",
    "branch_b": "resnet38",
    "branch_a_options": {},
    "branch_b_options": {},
    "share_stem": True,
    "timm_version": None,
}
CRF_BACKENDS = ("pydensecrf", "torch")
# the rows of Table 1: (agm_stages, coam_stages)
TABLE1_PRESETS = {
    "baseline": ((), ()),
    "oa": ((4,), ()),
    "sc": ((4,), (4,)),
    "ma": ((3, 4, 5), ()),
    "ac": ((3, 4, 5), (3, 4, 5)),
}


@dataclass
class AgenConfig(SegmentationConfig):
    """Configuration of :class:`agen_hf.AgenModel`.

    Labels
        num_labels: classes of the segmentation output, background included (``C + 1``; the
            paper's VOC: 21). The recipes set it, with the names, from the training dataset.
        id2label / label2id: class names, background at 0; VOC's when ``num_labels == 21`` and
            none are given.
        ignore_index: label value of unassigned, conflicting and boundary pixels (255, as VOC).

    Backbones (:mod:`agen_hf.backbones`: ``python -m agen_hf.backbones`` lists them)
        branch_a / branch_b: the registered backbone of each branch (the paper's: ``"vgg16"``
            and ``"resnet38"``; also ``"resnet50"``, ``"resnet101"``, ``"convnext_tiny"``,
            ``"timm:<model>"``).
        branch_a_options / branch_b_options: options of a backbone that is not the paper's
            (e.g. ``{"layers": [3, 4, 6, 3]}``, timm's ``create_model`` keywords); the
            paper's take their widths from the fields below.
        share_stem: branch B follows branch A's stem (the paper: ResNet-38 after VGG16's
            conv1-conv2); None resolves to True where branch B's body can follow it, else
            False (one stem each).
        timm_version: the timm version a timm backbone was built with (recorded).

    Classification branch A (DeepLab-style VGG16, output stride 8, section III.1)
        vgg_channels: output channels of VGG blocks conv1..conv5 (64, 128, 256, 512, 512).
        vgg_depths: 3x3 convolutions per block (2, 2, 3, 3, 3).
        vgg_stage5_dilation: dilation of conv5 once pool4 has stride 1 (2).
        fc_channels: channels of the two 3x3 convolutions replacing fc6/fc7 (1024).
        fc6_dilation: dilation of the first of them (12, DeepLab-LargeFOV's fc6).
        vgg_batch_norm: batch norm after every VGG convolution, as torchvision's VGG16-BN
            (False, DeepLab's VGG16 has none; the tiny config, trained from scratch, sets True).

    Segmentation branch B (shares conv1-conv2 with A; the rest is the wide ResNet-38 of Wu et al.)
        resnet_widths: output channels of blocks b3, b4, b5, b6, b7 (256, 512, 1024, 2048, 4096).
        resnet_depths: residual units in b3, b4, b5 (3, 6, 3); b6 and b7 have one each.
        resnet_dropout: dropout in the bottleneck units b6 and b7 (0.3, 0.5).
        seg_head_channels / seg_head_dilation: the 3x3 dilated conv before the 1x1 classifier
            of branch B (512, 12, as RRM's segmentation head).
        freeze_batch_norm: keep ResNet-38's batch norms in eval mode with fixed affine
            parameters, as PSA/SEAM/RRM train it from ImageNet statistics (True; the tiny
            config, trained from scratch, sets False).

    Attention guided modules (AGM, Fig. 2) and context attention (CoAM, eq. 5-9)
        agm_stages: stages n in {3, 4, 5} that get an AGM-n (all: the paper's full model).
        coam_stages: stages whose AGM maps are enhanced by CoAM-n (needs AGM-n).
        agm_cls_channels: channels of branch C's two 3x3 convolutions (256).
        agm_seg_channels: channels of branch D's two 3x3 convolutions (512).
        classifier_bias: a bias in the score layers: the class-aware 1x1 convolutions of
            branch A and of the AGMs' branch C, and branch B's 1x1 logit convolution (False;
            the paper does not say. From scratch it lets the scores start from the class
            prior at once: the quickstart sets True).
        lse_pooling_r: how the class-aware maps pool to eq. 1's class scores: 0 is the
            paper's GAP; r > 0 is log-sum-exp pooling, ``(1/r) log mean_u exp(r F_c,u)``, which
            runs from GAP (r -> 0) to the maximum (r -> inf) and weighs the strongest
            positions more (0; from scratch the quickstart sets 5: its classes separate in
            two thirds of the steps).

    Pseudo labels (eq. 2-4, section IV.1)
        cam_alpha: ∂ of eq. 4 (8).
        threshold_a, threshold_agm5: δ for branch A and AGM-5 (0.3).
        threshold_agm4, threshold_agm3: δ for AGM-4 and AGM-3 (0.4).

    Boundary loss (eq. 14)
        use_boundary_loss: add L_boundary to the total loss (True).
        boundary_crf: ``"pydensecrf"`` (the dense CRF of Krähenbühl & Koltun, needs the ``crf``
            extra) or ``"torch"`` (the same mean-field model with an exact Gaussian kernel in
            pure torch, for machines without pydensecrf).
        crf_iterations, crf_pos_xy_std, crf_pos_w, crf_bi_xy_std, crf_bi_rgb_std, crf_bi_w:
            mean-field iterations and kernel parameters in input-image pixels (SEC/DSRG: 10, 3,
            3, 80, 13, 10); spatial standard deviations are divided by the input/logits ratio.

    Input normalisation
        image_mean / image_std: ImageNet statistics, used to recover the RGB image for the CRF.
    """

    model_type: ClassVar[str] = "agen"
    # fields added after runs were recorded, at the value those runs had: a run whose
    # fingerprint lacks one resumes (see run_dict)
    implied_by_older_versions: ClassVar[dict[str, Any]] = {**PAPER_BACKBONES, "lse_pooling_r": 0.0}

    num_labels: int = 21
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    ignore_index: int = IGNORE_INDEX

    vgg_channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    vgg_depths: tuple[int, ...] = (2, 2, 3, 3, 3)
    vgg_stage5_dilation: int = 2
    fc_channels: int = 1024
    fc6_dilation: int = 12
    vgg_batch_norm: bool = False

    resnet_widths: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    resnet_depths: tuple[int, ...] = (3, 6, 3)
    resnet_dropout: tuple[float, ...] = (0.3, 0.5)
    seg_head_channels: int = 512
    seg_head_dilation: int = 12
    freeze_batch_norm: bool = True

    branch_a: str = "vgg16"
    branch_b: str = "resnet38"
    branch_a_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    branch_b_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    share_stem: bool | None = None
    timm_version: str | None = None

    agm_stages: tuple[int, ...] = (3, 4, 5)
    coam_stages: tuple[int, ...] = (3, 4, 5)
    agm_cls_channels: int = 256
    agm_seg_channels: int = 512
    classifier_bias: bool = False
    lse_pooling_r: float = 0.0

    cam_alpha: float = 8.0
    threshold_a: float = 0.3
    threshold_agm5: float = 0.3
    threshold_agm4: float = 0.4
    threshold_agm3: float = 0.4

    use_boundary_loss: bool = True
    boundary_crf: str = "pydensecrf"
    crf_iterations: int = 10
    crf_pos_xy_std: float = 3.0
    crf_pos_w: float = 3.0
    crf_bi_xy_std: float = 80.0
    crf_bi_rgb_std: float = 13.0
    crf_bi_w: float = 10.0

    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in (
            "vgg_channels",
            "vgg_depths",
            "resnet_widths",
            "resnet_depths",
            "resnet_dropout",
            "agm_stages",
            "coam_stages",
            "image_mean",
            "image_std",
        ):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ValueError(f"{name}: expected a sequence, got {value!r}")
            setattr(self, name, tuple(value))
        self.agm_stages = tuple(sorted(self._int_set("agm_stages")))
        self.coam_stages = tuple(sorted(self._int_set("coam_stages")))
        self._validate()
        self._resolve_backbones()
        if self.id2label is None:
            self.id2label = default_id2label(self.num_labels)
        else:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise ValueError(
                f"id2label: keys must be 0..{self.num_labels - 1}, got {sorted(self.id2label)}"
            )
        expected = {v: k for k, v in self.id2label.items()}
        if self.label2id is None:
            self.label2id = expected
        else:
            self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
            if self.label2id != expected:
                raise ValueError("label2id: must be the inverse of id2label")

    def _int_set(self, name: str) -> set[int]:
        values = getattr(self, name)
        out = set()
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v not in STAGES:
                raise ValueError(f"{name}: unknown stage {v!r}; stages are 3, 4 and 5")
            out.add(v)
        return out

    def _validate(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"{name}: {why}, got {getattr(self, name)!r}")

        if (
            isinstance(self.num_labels, bool)
            or not isinstance(self.num_labels, int)
            or self.num_labels < 2
        ):
            fail("num_labels", "must be an integer >= 2 (background + at least one class)")
        if not isinstance(self.ignore_index, int) or self.ignore_index < self.num_labels:
            fail("ignore_index", f"must be >= num_labels ({self.num_labels})")
        missing = set(self.coam_stages) - set(self.agm_stages)
        if missing:
            raise ValueError(
                f"coam_stages: CoAM-{min(missing)} needs AGM-{min(missing)}; "
                f"agm_stages is {self.agm_stages}"
            )
        lengths = {
            "vgg_channels": 5,
            "vgg_depths": 5,
            "resnet_widths": 5,
            "resnet_depths": 3,
            "resnet_dropout": 2,
            "image_mean": 3,
            "image_std": 3,
        }
        for name, n in lengths.items():
            if len(getattr(self, name)) != n:
                fail(name, f"needs {n} values")
        for name in ("vgg_channels", "vgg_depths", "resnet_widths", "resnet_depths"):
            if any(not isinstance(v, int) or v < 1 for v in getattr(self, name)):
                fail(name, "values must be positive integers")
        for name in (
            "vgg_stage5_dilation",
            "fc_channels",
            "fc6_dilation",
            "seg_head_channels",
            "seg_head_dilation",
            "agm_cls_channels",
            "agm_seg_channels",
            "crf_iterations",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                fail(name, "must be a positive integer")
        if any(not 0 <= p < 1 for p in self.resnet_dropout):
            fail("resnet_dropout", "probabilities must be in [0, 1)")
        r = self.lse_pooling_r
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < math.inf:
            fail("lse_pooling_r", "must be a finite number >= 0 (0: GAP, eq. 1)")
        if not self.cam_alpha >= 1:
            fail("cam_alpha", "∂ of eq. 4 must be >= 1")
        for name in ("threshold_a", "threshold_agm5", "threshold_agm4", "threshold_agm3"):
            if not 0 < getattr(self, name) < 1:
                fail(name, "a seed threshold must lie in (0, 1)")
        if self.boundary_crf not in CRF_BACKENDS:
            fail("boundary_crf", f"must be one of {CRF_BACKENDS}")
        for name in ("crf_pos_xy_std", "crf_pos_w", "crf_bi_xy_std", "crf_bi_rgb_std", "crf_bi_w"):
            if not getattr(self, name) > 0:
                fail(name, "must be > 0")
        if any(not s > 0 for s in self.image_std):
            fail("image_std", "values must be > 0")

    def _resolve_backbones(self) -> None:
        """Both backbones registered, their options known, ``share_stem`` resolved."""
        specs = {}
        for branch in ("branch_a", "branch_b"):
            options = getattr(self, f"{branch}_options")
            if not isinstance(options, dict):
                raise ValueError(f"{branch}_options: expected a mapping, got {options!r}")
            setattr(self, f"{branch}_options", dict(options))
            try:
                specs[branch] = spec_of(getattr(self, branch))
                check_options(specs[branch], options)
            except ValueError as e:
                raise ValueError(f"{branch}: {e}") from None
        a, b = specs["branch_a"], specs["branch_b"]
        can = a.stem_shareable and b.can_follow(a.family)
        if self.share_stem is None:
            self.share_stem = can
        elif self.share_stem and not can:
            raise ValueError(
                f"share_stem: branch_b {b.name} cannot follow branch_a {a.name}'s stem "
                f"(family {a.family}); set share_stem false (one stem each)"
            )

    @property
    def num_classes(self) -> int:
        """C, the number of foreground classes."""
        return self.num_labels - 1

    def threshold(self, head: str) -> float:
        """δ of a head: ``"A"`` or ``"agm3"``/``"agm4"``/``"agm5"``."""
        thresholds = {
            "A": self.threshold_a,
            "agm3": self.threshold_agm3,
            "agm4": self.threshold_agm4,
            "agm5": self.threshold_agm5,
        }
        if head not in thresholds:
            raise ValueError(f"head: expected one of {sorted(thresholds)}, got {head!r}")
        return thresholds[head]

    @classmethod
    def tiny(cls, **overrides: Any) -> "AgenConfig":
        """The same network at toy width and depth: runs on a CPU in milliseconds at 64x64."""
        values = dict(
            vgg_channels=(8, 16, 16, 32, 32),
            vgg_depths=(1, 1, 1, 1, 1),
            fc_channels=32,
            fc6_dilation=1,
            resnet_widths=(16, 32, 32, 64, 64),
            resnet_depths=(1, 1, 1),
            seg_head_channels=16,
            seg_head_dilation=1,
            agm_cls_channels=16,
            agm_seg_channels=16,
            freeze_batch_norm=False,
            vgg_batch_norm=True,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def named(cls, name_or_path: str | os.PathLike) -> "AgenConfig":
        """``"paper"`` (the defaults), ``"tiny"`` (:meth:`tiny`) or a config.json path."""
        if name_or_path == "paper":
            return cls()
        if name_or_path == "tiny":
            return cls.tiny()
        return cls.from_json_file(name_or_path)

    def with_classes(self, id2label: dict[int, str]) -> "AgenConfig":
        """This config for another label set (``{0: "background", 1: ...}``, e.g.
        :func:`agen_hf.data.id2label_for` of a dataset's classes)."""
        return dataclasses.replace(
            self, num_labels=len(id2label), id2label=dict(id2label), label2id=None
        )

    def with_preset(self, preset: str) -> "AgenConfig":
        """This config with the AGM and CoAM stages of a Table 1 row (``TABLE1_PRESETS``)."""
        if preset not in TABLE1_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(TABLE1_PRESETS)}, got {preset!r}")
        agm, coam = TABLE1_PRESETS[preset]
        return dataclasses.replace(self, agm_stages=agm, coam_stages=coam)


__all__ = ["AgenConfig", "VOC_CLASSES", "STAGES", "CRF_BACKENDS", "TABLE1_PRESETS"]
