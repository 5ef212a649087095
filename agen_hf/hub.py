"""Hub I/O every agen_hf model shares on top of ``PyTorchModelHubMixin``: model-card metadata
and its ``model-index`` results, strict loading (of wrapped training checkpoints too), and the
image processor's ``preprocessor_config.json`` saved (and pushed) with the weights."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, PyTorchModelHubMixin
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from safetensors.torch import load_file
from torch import nn

from .image_processing import AgenImageProcessor
from .labels import BACKGROUND, same_classes_or_raise

logger = logging.getLogger(__name__)

# what a training wrapper puts in front of every weight name: DistributedDataParallel's
# ``module.`` and torch.compile's ``_orig_mod.`` (a checkpoint-<step> is saved wrapped)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class SegmentationHubMixin(
    PyTorchModelHubMixin,
    library_name="agen_hf",
    tags=["image-segmentation", "weakly-supervised-segmentation"],
    pipeline_tag="image-segmentation",
    license="mit",
    paper_url="https://doi.org/10.23919/cje.2021.00.230",
):
    """The model-card metadata every agen_hf model shares (a subclass adds its own tags and
    template); ``save_pretrained``/``push_to_hub`` also write ``preprocessor_config.json``
    (from the model config's ``image_mean``/``image_std``); ``from_pretrained`` is strict by
    default."""

    @property
    def device(self):
        """The device of the weights (transformers' ``PreTrainedModel.device``)."""
        return next(self.parameters()).device

    @property
    def dtype(self):
        """The dtype of the weights (transformers' ``PreTrainedModel.dtype``)."""
        return next(self.parameters()).dtype

    def save_pretrained(
        self, save_directory, *args, model_card_kwargs: dict | None = None, **kwargs
    ):
        # the mixin keeps an existing README.md; a folder saved again gets the new card, whose
        # loading example names the folder (push_to_hub: the repo)
        Path(save_directory, "README.md").unlink(missing_ok=True)
        model_card_kwargs = {"repo_id": str(save_directory), **(model_card_kwargs or {})}
        return super().save_pretrained(
            save_directory, *args, model_card_kwargs=model_card_kwargs, **kwargs
        )

    def push_to_hub(self, repo_id: str, *args, model_card_kwargs: dict | None = None, **kwargs):
        model_card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, *args, model_card_kwargs=model_card_kwargs, **kwargs)

    def generate_model_card(
        self,
        *args,
        repo_id: str | None = None,
        eval_results: list[dict] | None = None,
        dataset_tags: list[str] | None = None,
        **kwargs,
    ) -> ModelCard:
        """The card of this model. ``repo_id``: what its loading example names (the Hub repo
        when pushing, the folder otherwise); ``eval_results``: ``EvalResult`` fields
        (``task_type``, ``dataset_type``, ``dataset_name``, ``dataset_split``, ``metric_type``,
        ``metric_value`` ...), written as the ``model-index`` the Hub shows; ``dataset_tags``:
        the training data's tags (``pascal-voc``, ``coco``, ...) and ``datasets`` entry; other
        keyword arguments fill the template."""
        info = self._hub_mixin_info
        card_data = copy.deepcopy(info.model_card_data)
        if dataset_tags:
            card_data.tags = [*(card_data.tags or []), *dataset_tags]
            card_data.datasets = [eval_results[0]["dataset_type"]] if eval_results else None
        if eval_results:
            card_data.eval_results = [EvalResult(**r) for r in eval_results]
            card_data.model_name = Path(repo_id).name if repo_id else type(self).__name__
        kwargs.setdefault("num_labels", self.config.num_labels)
        kwargs.setdefault("logit_stride", getattr(self, "logit_stride", None))
        return ModelCard.from_template(
            card_data=card_data,
            template_str=info.model_card_template,
            repo_url=info.repo_url,
            paper_url=info.paper_url,
            docs_url=info.docs_url,
            repo_id=repo_id or "path/to/model_folder",
            **kwargs,
        )

    def _save_pretrained(self, save_directory) -> None:
        super()._save_pretrained(save_directory)
        self.save_model_config(save_directory)

    def save_model_config(self, save_directory) -> None:
        """``config.json`` (as the mixin writes it) and ``preprocessor_config.json``: with a
        ``model.safetensors`` beside them, the folder loads with ``from_pretrained`` (every
        training ``checkpoint-<step>`` is written so)."""
        self.config.to_json_file(Path(save_directory, "config.json"))  # with its model_type
        AgenImageProcessor(
            image_mean=self.config.image_mean,
            image_std=self.config.image_std,
            size_divisor=getattr(self, "output_stride", 8),
        ).save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *,
        num_labels: int | None = None,
        id2label: dict | None = None,
        ignore_mismatched_sizes: bool = False,
        **kwargs,
    ):
        """A saved model folder or a Hub repo id, as transformers loads it: ``id2label`` (or
        ``num_labels``, naming the classes ``LABEL_i``, background included) asks for another
        label set, which ``ignore_mismatched_sizes=True`` allows by re-initialising the class
        layers (:func:`model_for_classes`); the mixin's keyword arguments (``revision``,
        ``cache_dir``, ``token``...) pass through. Errors name the path: a folder that does
        not exist, a folder without ``config.json``, a ``config.json`` that is not JSON."""
        name = str(pretrained_model_name_or_path)
        check_model_folder(name)
        try:
            if "config" not in kwargs and not kwargs.get("revision"):
                # read (and validated: model_type, unknown fields) by the config class
                kwargs["config"] = cls.config_class.from_pretrained(pretrained_model_name_or_path)
            model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (
            HFValidationError,
            EntryNotFoundError,
            RepositoryNotFoundError,
            LocalEntryNotFoundError,
        ) as e:
            raise FileNotFoundError(
                f"{name}: not a model folder here, and not found on the Hub "
                f"({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None
        if num_labels is not None and id2label is None:
            id2label = {0: BACKGROUND, **{i: f"LABEL_{i}" for i in range(1, num_labels)}}
        if id2label is not None:
            id2label = {int(k): str(v) for k, v in id2label.items()}
            if num_labels is not None and len(id2label) != num_labels:
                raise ValueError(
                    f"num_labels={num_labels} but id2label names {len(id2label)} labels"
                )
            model = model_for_classes(
                model,
                id2label,
                ignore_mismatched_sizes=ignore_mismatched_sizes,
                model_name=name,
                data_name="the id2label given",
            )
        return model

    @classmethod
    def _from_pretrained(cls, *, strict: bool = True, **kwargs):
        # The mixin loads non-strictly by default; a checkpoint that misses or adds weights is
        # an error here unless the caller passes strict=False.
        return super()._from_pretrained(strict=strict, **kwargs)

    @classmethod
    def _load_as_safetensor(cls, model, model_file: str, map_location: str, strict: bool):
        """The weights of ``model_file``, whether saved by ``save_pretrained`` or by a wrapped
        training model (``checkpoint-<step>``: ``module.``/``_orig_mod.`` prefixes)."""
        state = load_file(model_file, device=map_location)
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
        model.load_state_dict(state, strict=strict)
        model.eval()
        return model


def check_model_folder(name: str) -> None:
    """Raise naming the file when ``name`` is meant as a local folder and is not a loadable
    one: it exists but is no folder or has no ``config.json``, or it does not
    exist while its first part does (``runs/missing`` beside a ``runs/`` folder), or it has
    the form of no Hub id (``./x``, ``/x``, ``a/b/c``). A Hub id is left to the Hub."""
    path = Path(name)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(
                f"{config}: missing, so {name} is not a saved model folder "
                "(save_pretrained writes config.json and "
                "model.safetensors)"
            )
        return  # its contents: read and checked by the config class
    if path.exists():
        raise NotADirectoryError(f"{name}: a file, not a model folder")
    parts = path.parts
    beside = len(parts) == 2 and Path(parts[0]).is_dir()
    if name.startswith((".", "/", "~")) or len(parts) > 2 or beside:
        there = sorted(p.name for p in Path(parts[0]).iterdir())[:8] if beside else None
        raise FileNotFoundError(
            f"{name}: no such model folder" + (f" ({parts[0]}/ holds {there})" if beside else "")
        )


def mean_iou_result(
    mean_iou: float, dataset_type: str, dataset_name: str, split: str = "val"
) -> dict:
    """One ``eval_results`` entry of :meth:`SegmentationHubMixin.generate_model_card`: the
    mean IoU (a fraction, as ``evaluate``'s ``mean_iou`` returns it) on ``split``."""
    return {
        "task_type": "image-segmentation",
        "task_name": "Semantic Segmentation",
        "dataset_type": dataset_type,
        "dataset_name": dataset_name,
        "dataset_split": split,
        "metric_type": "mean_iou",
        "metric_name": "mean IoU",
        "metric_value": round(float(mean_iou), 4),
    }


def model_for_classes(
    model,
    id2label: dict[int, str],
    *,
    ignore_mismatched_sizes: bool = False,
    model_name: str = "the model",
    data_name: str = "the dataset",
):
    """``model`` when it knows ``id2label``'s classes; otherwise, with
    ``ignore_mismatched_sizes`` (transformers' flag), a model of the same architecture for
    those classes that keeps every weight whose shape still fits and re-initialises the class
    layers (logged), else a ValueError naming both class lists."""
    ours = model.config.label_names[1:]
    theirs = [id2label[i] for i in range(1, len(id2label))]
    if ours == theirs:
        return model
    if not ignore_mismatched_sizes:
        same_classes_or_raise(ours, theirs, model_name, data_name)
    fresh = type(model)(model.config.with_classes(id2label))
    state = fresh.state_dict()
    sizes = {model.config.num_labels, model.config.num_labels - 1}  # C + 1 logits, C scores
    class_layers = {
        f"{name}.{p}"
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.out_channels in sizes
        for p, _ in m.named_parameters(recurse=False)
    }
    kept = {
        k: v
        for k, v in model.state_dict().items()
        if k in state and state[k].shape == v.shape and k not in class_layers
    }
    state.update(kept)
    fresh.load_state_dict(state)
    new = sorted(set(state) - set(kept))
    logger.warning(
        "%s: %d classes -> %s's %d (--ignore_mismatched_sizes); re-initialised %s",
        model_name,
        len(ours),
        data_name,
        len(theirs),
        ", ".join(new),
    )
    return fresh
