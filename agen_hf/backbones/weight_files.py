"""Weight files as backbone families publish them, read and copied by name into a model, never
downloaded: :func:`read_state_dict`, :func:`load_mapped` (an explicit name mapping, a
:class:`LoadReport` of what was loaded, missing and unexpected; a shape mismatch is a
``ValueError`` naming both keys and shapes), and the family loaders the registry's specs call
(:func:`load_vgg16_into`, :func:`load_resnet38_into`, :func:`load_by_name` for files that use
the family's own names). :mod:`agen_hf.weights` loads them into whole models."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

_VGG_DEPTHS = (2, 2, 3, 3, 3)


@dataclass
class LoadReport:
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" ... (+{len(keys) - 6})" if len(keys) > 6 else "")

        return (
            f"{self.source}: {len(self.loaded)} tensors loaded; missing "
            f"{len(self.missing)} [{few(self.missing)}]; unexpected {len(self.unexpected)} "
            f"[{few(self.unexpected)}]"
        )


def read_state_dict(source: str | os.PathLike | dict) -> tuple[dict[str, torch.Tensor], str]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only``; nested under
    ``state_dict``/``model`` and ``module.`` prefixes unwrapped), or a dict as it is."""
    if isinstance(source, dict):
        state, name = source, "the given state dict"
    else:
        path, name = Path(source), str(source)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weight file not found")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(path)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt, pickled code, wrong format: one message
            raise ValueError(f"{name}: cannot read it as a state dict ({e})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{name}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}, name


def load_mapped(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    mapping: dict[str, str],
    scope: list[str],
    name: str,
) -> LoadReport:
    """Copy ``state[src]`` into ``module``'s ``dst`` for each ``dst: src`` of ``mapping``.
    ``scope``: the target keys the file is meant to fill (the rest of them are "missing")."""
    target = module.state_dict()
    report = LoadReport(name)
    for dst, src in mapping.items():
        if src not in state:
            continue
        if tuple(state[src].shape) != tuple(target[dst].shape):
            raise ValueError(
                f"{name}: {src} has shape {tuple(state[src].shape)} but {dst} "
                f"needs {tuple(target[dst].shape)}; the file does not fit this "
                "configuration"
            )
    with torch.no_grad():
        for dst, src in mapping.items():
            if src in state:
                target[dst].copy_(state[src].to(target[dst].dtype))
                report.loaded.append(dst)
    used = {mapping[d] for d in report.loaded}
    # a batch-norm step counter is bookkeeping, not a weight: never reported missing
    report.missing = [
        k for k in scope if k not in report.loaded and not k.endswith("num_batches_tracked")
    ]
    report.unexpected = [k for k in state if k not in used]
    return report


def vgg_mapping(
    module: nn.Module, prefixes: dict[int, str], depths, batch_norm: bool
) -> dict[str, str]:
    """torchvision ``features.<i>`` -> our ``<prefix>conv{b}_{j}`` / ``bn{b}_{j}`` (the keys
    ``module`` has)."""
    if tuple(depths) != _VGG_DEPTHS:
        raise ValueError(f"vgg_depths {tuple(depths)}: VGG16 weights need {_VGG_DEPTHS}")
    mapping, index = {}, 0
    for block, depth in enumerate(depths, start=1):
        for j in range(1, depth + 1):
            if block not in prefixes:  # a stem this branch does not have
                index += 3 if batch_norm else 2
                continue
            conv = f"{prefixes[block]}conv{block}_{j}"
            for p in ("weight", "bias"):
                mapping[f"{conv}.{p}"] = f"features.{index}.{p}"
            if batch_norm:
                bn = f"{prefixes[block]}bn{block}_{j}"
                for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    mapping[f"{bn}.{p}"] = f"features.{index + 1}.{p}"
            index += 3 if batch_norm else 2
        index += 1  # the pooling layer
    target = module.state_dict()
    return {d: s for d, s in mapping.items() if d in target}


def load_vgg16_into(
    model: nn.Module, stem_prefix: str | None, body_prefix: str, source
) -> LoadReport:
    """torchvision VGG16 (or VGG16-BN, matching the config's ``vgg_batch_norm``) ImageNet
    weights into a VGG16 stem (conv1-conv2, keys under ``stem_prefix``; None: the body follows
    another branch's stem) and body (conv3-conv5, under ``body_prefix``) of ``model``."""
    state, name = read_state_dict(source)
    cfg = model.config
    prefixes = {b: f"{body_prefix}conv{b}." for b in (3, 4, 5)}
    if stem_prefix is not None:
        prefixes.update({1: f"{stem_prefix}conv1.", 2: f"{stem_prefix}conv2."})
    mapping = vgg_mapping(
        model, prefixes, cfg.vgg_depths, bool(getattr(cfg, "vgg_batch_norm", False))
    )
    check_vgg_batch_norm(state, mapping, name)
    return load_mapped(model, state, mapping, list(mapping), name)


def check_vgg_batch_norm(state: dict, mapping: dict, name: str) -> None:
    bn_in_file = any(k.endswith("running_mean") for k in state)
    bn_in_model = any(k.endswith("running_mean") for k in mapping)
    if bn_in_file != bn_in_model:
        raise ValueError(
            f"{name}: a VGG16{'-BN' if bn_in_file else ''} file for a VGG16"
            f"{'-BN' if bn_in_model else ''} model; set vgg_batch_norm to match"
        )


def load_resnet38_into(
    model: nn.Module, stem_prefix: str | None, body_prefix: str, source
) -> LoadReport:
    """The ImageNet ResNet-38 of PSA/SEAM/RRM into a ResNet-38 body (``b3 ... bn7`` under
    ``body_prefix``; its head is new) and, when it has one, its own stem (``conv1a``, ``b2``
    under ``stem_prefix``): the same unit names. Following VGG's stem (the paper), the file's
    ``conv1a`` and ``b2`` are reported unexpected."""
    state, name = read_state_dict(source)
    keys = list(model.state_dict())
    body = [k for k in keys if k.startswith(body_prefix) and not _is_head(k, body_prefix)]
    stem = [
        k
        for k in keys
        if stem_prefix is not None
        and k.startswith(stem_prefix)
        and k.removeprefix(stem_prefix).startswith(("conv1a", "b2"))
    ]
    mapping = {k: k.removeprefix(body_prefix) for k in body}
    mapping.update({k: k.removeprefix(stem_prefix) for k in stem})
    return load_mapped(model, state, mapping, body + stem, name)


HEAD_NAMES = ("fc6.", "fc7.", "classifier.", "head.")


def _is_head(key: str, body_prefix: str) -> bool:
    """A key of the branch head added beside a body's layers (:mod:`agen_hf.branches`)."""
    return key.removeprefix(body_prefix).startswith(HEAD_NAMES)


def load_by_name(model: nn.Module, prefixes: dict[str, str], source) -> LoadReport:
    """Weights whose names are the backbone family's own (torchvision's, timm's) into the
    keys of ``model`` under each ``target prefix: file prefix`` of ``prefixes`` (a branch's
    head, added beside the body, is not the file's). The longest target prefix wins."""
    state, name = read_state_dict(source)
    mapping, scope = {}, []
    prefixes = {k: v for k, v in prefixes.items() if k is not None}
    order = sorted(prefixes, key=len, reverse=True)
    for key in model.state_dict():
        prefix = next((p for p in order if p and key.startswith(p)), None)
        if prefix is None or _is_head(key, prefix):
            continue
        scope.append(key)
        mapping[key] = prefixes[prefix] + key.removeprefix(prefix)
    return load_mapped(model, state, mapping, scope, name)
