"""AgenModel: the attention guided enhancement network (Fig. 1), loadable the Hugging Face way."""

import logging
import math

import torch
from torch import nn

from .agm import AttentionGuidedModule
from .backbones import frozen_batch_norm, spec_of
from .branches import (
    add_classification_head,
    add_segmentation_head,
    class_maps,
    segmentation_logits,
)
from .cam import class_scores, pseudo_labels
from .coam import ContextAttention
from .configuration_agen import AgenConfig
from .crf import CrfParams
from .hub import SegmentationHubMixin
from .losses import (
    ProcessGroup,
    balanced_seeding_loss,
    boundary_loss,
    fully_supervised_loss,
    multilabel_loss,
)
from .model_card import AGEN_CARD
from .modeling_outputs import AgenOutput
from .normalization import unnormalize
from .parameter_groups import split_parameters
from .upsampling import upsample_bilinear

logger = logging.getLogger(__name__)


def _init_weights(module: nn.Module) -> None:
    """He initialisation for convolutions followed by ReLU, identity batch norms. The paper
    initialises what ImageNet weights do not cover "randomly"; PyTorch's default conv
    initialisation shrinks activations about 2.4x per layer, which leaves a VGG without batch
    norm untrainable from scratch (the synthetic quickstart and the tiny config)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class AgenModel(nn.Module, SegmentationHubMixin, tags=["agen"], model_card_template=AGEN_CARD):
    """AGEN (Fig. 1): a stem (the paper's: VGG16's conv1-conv2, shared by both branches);
    classification branch A (the paper's: DeepLab-VGG16); segmentation branch B (the paper's:
    ResNet-38); AGM-n on the stage-n taps of A and B for n in ``config.agm_stages``; CoAM-n on
    AGM-n's class-aware maps for n in ``config.coam_stages``, accumulated top-down. The
    backbones are ``config.branch_a`` / ``config.branch_b`` (:mod:`agen_hf.backbones`); branch
    B has a stem of its own (``stem_b``) when ``config.share_stem`` is False."""

    config_class = AgenConfig

    def __init__(self, config: AgenConfig) -> None:
        super().__init__()
        if not isinstance(config, AgenConfig):
            raise TypeError(f"config: expected an AgenConfig, got {type(config).__name__}")
        self.config = config
        # how many processes the boundary loss's pydensecrf spreads a batch over (0: inline);
        # a run-time setting, not part of the model: --boundary_crf_processes
        self.boundary_crf_processes = 0
        spec_a, spec_b = spec_of(config.branch_a), spec_of(config.branch_b)
        self.stem = spec_a.stem(config, config.branch_a_options)
        self.branch_a = add_classification_head(
            spec_a.body(config, config.branch_a_options, self.stem), config
        )
        self.stem_b = None if config.share_stem else spec_b.stem(config, config.branch_b_options)
        self.branch_b = add_segmentation_head(
            spec_b.body(config, config.branch_b_options, self.stem_b or self.stem), config
        )
        timm_version = getattr(self.branch_a, "timm_version", None) or getattr(
            self.branch_b, "timm_version", None
        )
        if timm_version and config.timm_version is None:
            config.timm_version = timm_version  # what built it, recorded in config.json
        self.agm = (
            AttentionGuidedModule(
                config.agm_stages,
                self.branch_a.stage_channels,
                self.branch_b.stage_channels,
                config.num_classes,
                config.agm_cls_channels,
                config.agm_seg_channels,
                config.classifier_bias,
            )
            if config.agm_stages
            else None
        )
        self.coam = nn.ModuleDict({str(n): ContextAttention() for n in config.coam_stages})
        self.apply(_init_weights)
        for scores in self.score_layers():  # class scores and logits start near 0
            nn.init.normal_(scores.weight, std=0.01)
            if scores.bias is not None:
                nn.init.zeros_(scores.bias)
        if config.freeze_batch_norm:
            for part in self.frozen_parts():
                frozen_batch_norm(part)
        if config.use_boundary_loss and config.boundary_crf == "torch":
            logger.warning(
                "AGEN boundary loss uses the pure-torch dense CRF "
                "(config.boundary_crf='torch'), not pydensecrf"
            )

    def score_layers(self) -> list[nn.Conv2d]:
        """The 1x1 convolutions that output class scores (C) or segmentation logits (C+1)."""
        layers = [self.branch_a.classifier, self.branch_b.head[-1]]
        if self.agm is not None:
            layers += [self.agm.cls_shared[-1], self.agm.seg_shared[-1]]
        return layers

    def frozen_parts(self) -> list[nn.Module]:
        """Branch B and its own stem, whose batch norms ``freeze_batch_norm`` keeps."""
        return [self.branch_b] + ([self.stem_b] if self.stem_b is not None else [])

    def train(self, mode: bool = True) -> "AgenModel":
        super().train(mode)
        if self.config.freeze_batch_norm:  # ImageNet statistics stay as they are
            for part in self.frozen_parts():
                frozen_batch_norm(part)
        return self

    @property
    def output_stride(self) -> int:
        """What an input's size must be a multiple of for every map to align: the least
        common multiple of the two branches' output strides (8 for the paper's pair)."""
        return math.lcm(self.branch_a.output_stride, self.branch_b.output_stride)

    @property
    def logit_stride(self) -> int:
        """The stride of the segmentation logits: branch B's output stride."""
        return self.branch_b.output_stride

    @property
    def heads(self) -> list[str]:
        """Head names in the top-down order CoAM is accumulated: A, agm5, agm4, agm3."""
        return ["A"] + [f"agm{n}" for n in sorted(self.config.agm_stages, reverse=True)]

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        segmentation_only: bool = False,
        classification_only: bool = False,
        masks: torch.Tensor | None = None,
        process_group: ProcessGroup | None = None,
    ) -> AgenOutput:
        """pixel_values: normalised images (B, 3, H, W); labels: image-level multi-hot (B, C).

        ``segmentation_only=True`` is the inference path: branch B alone, no maps; with
        ``masks`` (B, H, W) it is the fully supervised upper bound, whose loss is branch B's
        cross-entropy against them (``seg_B_full``).
        ``classification_only=True`` runs the classification side alone (stem, branch A, the
        AGMs' branch C, CoAM) and its loss is eq. 11 alone: the classification-first phase
        of a network trained from scratch, whose CAMs are noise at step 0.
        ``process_group`` pools the seeding losses' batch means over processes (see
        :func:`agen_hf.losses.balanced_seeding_loss`).
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values: expected (B, 3, H, W), got {tuple(pixel_values.shape)}"
            )
        if segmentation_only and classification_only:
            raise ValueError("segmentation_only and classification_only exclude each other")
        if masks is not None and not segmentation_only:
            raise ValueError(
                "masks (the fully supervised upper bound) train branch B alone: "
                "pass segmentation_only=True"
            )
        stem = self.stem(pixel_values)
        stem_b = stem if self.stem_b is None else self.stem_b(pixel_values)
        taps_b, logits = (None, None) if classification_only else self._segment(stem_b)
        if segmentation_only:
            out = AgenOutput(logits=logits)
            if masks is not None:
                loss = fully_supervised_loss(logits, masks, self.config.ignore_index, process_group)
                out.loss, out.loss_terms = loss, {"seg_B_full": loss}
            return out

        size = tuple(pixel_values.shape[-2:])
        taps_a, features_a = self.branch_a(stem)
        maps_a = class_maps(self.branch_a, features_a)
        out = AgenOutput(logits=logits, class_maps={"A": maps_a})
        high = maps_a
        for n in sorted(self.config.agm_stages, reverse=True):
            name = f"agm{n}"
            maps = self.agm.class_maps(n, taps_a[n])
            if str(n) in self.coam:  # eq. 5: F^{n} = CoAM(F^{n}, F^{n+1}), top-down
                out.class_maps_before_coam[name] = maps
                maps = self.coam[str(n)](maps, high)
            out.class_maps[name] = high = maps
            if not classification_only:
                out.agm_logits[name] = upsample_bilinear(
                    self.agm.segment(n, taps_b[n]).float(), size
                )
        out.class_logits = {
            name: class_scores(m, self.config.lse_pooling_r) for name, m in out.class_maps.items()
        }
        if labels is not None:
            self._add_loss(out, pixel_values, labels, process_group, classification_only)
        return out

    def _segment(self, stem: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Branch B: its stage taps and its logits."""
        taps, features = self.branch_b(stem)
        return taps, segmentation_logits(self.branch_b, features)

    def _add_loss(
        self,
        out: AgenOutput,
        pixel_values: torch.Tensor,
        labels: torch.Tensor,
        process_group: ProcessGroup | None,
        classification_only: bool = False,
    ) -> None:
        """Eq. 11 + 13 + 14 = L_total (eq. 15); eq. 11 alone with ``classification_only``."""
        cfg = self.config
        if labels.shape != (pixel_values.shape[0], cfg.num_classes):
            hint = (
                " (pixel label maps go in masks=, the fully supervised upper bound: "
                "labels= are image-level classes)"
                if labels.dim() == 3
                else ""
            )
            raise ValueError(
                f"labels: expected multi-hot ({pixel_values.shape[0]}, "
                f"{cfg.num_classes}), got {tuple(labels.shape)}{hint}"
            )
        terms = self._classification_terms(out, labels)
        if not classification_only:
            size = tuple(pixel_values.shape[-2:])
            terms.update(self._seeding_terms(out, labels, size, process_group))
            if cfg.use_boundary_loss:
                terms["boundary"] = boundary_loss(
                    self.unnormalize(pixel_values),
                    out.logits,
                    labels,
                    self.crf_params(),
                    cfg.boundary_crf,
                    self.boundary_crf_processes,
                )
        out.loss_terms = terms
        out.loss = torch.stack(list(terms.values())).sum()

    def _classification_terms(
        self, out: AgenOutput, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Eq. 11: the multi-label loss (eq. 10) of branch A and of every AGM's branch C."""
        return {
            f"cls_{head}": multilabel_loss(out.class_logits[head], labels) for head in self.heads
        }

    def _seeding_terms(
        self,
        out: AgenOutput,
        labels: torch.Tensor,
        size: tuple[int, int],
        process_group: ProcessGroup | None,
    ) -> dict[str, torch.Tensor]:
        """Eq. 13's four pairs: seeds of every head (eq. 2-4, stored in ``out.seeds``) against
        its segmentation (branch A's seeds train branch B), each by eq. 12."""
        cfg = self.config
        terms = {}
        for head in self.heads:
            seeds = pseudo_labels(
                out.class_maps[head],
                labels,
                size,
                cfg.cam_alpha,
                cfg.threshold(head),
                cfg.ignore_index,
            )
            out.seeds[head] = seeds
            if head == "A":
                seg = upsample_bilinear(out.logits.float(), size)
                terms["seg_B"] = balanced_seeding_loss(seg, seeds, cfg.ignore_index, process_group)
            else:
                terms[f"seg_{head}"] = balanced_seeding_loss(
                    out.agm_logits[head], seeds, cfg.ignore_index, process_group
                )
        return terms

    def coam_weights(self) -> dict[str, float]:
        """The learned weight λ of every CoAM (eq. 9), by stage: logged with each step."""
        return {f"coam{n}_lambda": coam.weight.item() for n, coam in self.coam.items()}

    def unnormalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised images -> RGB in 0..255 with this model's ``image_mean``/``image_std``
        (:func:`agen_hf.normalization.unnormalize`): the image the boundary loss's CRF sees."""
        return unnormalize(pixel_values, self.config.image_mean, self.config.image_std)

    def crf_params(self) -> CrfParams:
        c = self.config
        return CrfParams(
            c.crf_iterations,
            c.crf_pos_xy_std,
            c.crf_pos_w,
            c.crf_bi_xy_std,
            c.crf_bi_rgb_std,
            c.crf_bi_w,
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"backbone"``: layers initialised from ImageNet (VGG16 conv1-conv5, ResNet-38);
        ``"new"``: everything else (fc6/fc7, classifiers, heads, AGMs, CoAMs), which the paper
        trains with a 10x learning rate."""
        stems = [self.stem] + ([self.stem_b] if self.stem_b is not None else [])
        return split_parameters(
            self,
            [*stems, *self.branch_a.pretrained_modules(), *self.branch_b.pretrained_modules()],
        )
