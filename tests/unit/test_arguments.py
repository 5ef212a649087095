"""Typed arguments (:mod:`agen_hf.arguments`): dataclass fields become flags with their help,
type, choices and aliases; ``--config`` files are checked like the command line; a dataclass's
own check is an argparse error; and the fields that define a training run are the ones its
checkpoints have always recorded."""

from dataclasses import dataclass
from typing import ClassVar

import pytest

from agen_hf.arguments import (
    ArgumentParser,
    at_least,
    flag,
    flag_values,
    positive,
    run_defining,
)
from agen_hf.data.sources import SyntheticDataArguments
from agen_hf.engine.arguments import TrainingArguments


@dataclass
class Toy:
    group: ClassVar[str] = "toy"
    size: int = flag(3, "how big", type=positive, run=True)
    rate: float = flag(0.5, type=at_least(0.0, float))
    kind: str = flag("a", choices=["a", "b"])
    pair: list[int] | None = flag(None, nargs=2, type=int)
    verbose: bool = flag(False, "say more")
    path: str | None = flag(None, aliases=["--out"])

    def __post_init__(self):
        if self.kind == "b" and self.size > 5:
            raise ValueError("--kind b: --size must be <= 5")


def test_fields_become_flags_and_parse_into_the_dataclass():
    parser = ArgumentParser(Toy, config_file=True)
    (toy,) = parser.parse(["--size", "4", "--pair", "1", "2", "--verbose", "--out", "x"])
    assert toy == Toy(size=4, rate=0.5, kind="a", pair=[1, 2], verbose=True, path="x")
    assert parser.parse([])[0] == Toy()
    text = parser.format_help()
    assert "toy:" in text and "how big (default: 3)" in text and "--path PATH, --out PATH" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--size", "0"], "argument --size: must be >= 1, got 0"),
        (["--rate", "-1"], "argument --rate: must be >= 0.0, got -1"),
        (["--kind", "c"], "argument --kind: invalid choice: 'c'"),
        (["--pair", "1"], "argument --pair: expected 2 arguments"),
        (["--kind", "b", "--size", "6"], "error: --kind b: --size must be <= 5"),
    ],
)
def test_bad_values_are_argparse_errors_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        ArgumentParser(Toy).parse(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_config_file_gives_defaults_checked_like_flags(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("size: 4\npair: [5, 6]\nverbose: true\n")
    parser = ArgumentParser(Toy, config_file=True)
    (toy,) = parser.parse(["--config", str(config), "--size", "2"])
    assert (toy.size, toy.pair, toy.verbose) == (2, [5, 6], True)  # the command line wins
    config.write_text("size: 0\n")
    with pytest.raises(SystemExit):
        parser.parse(["--config", str(config)])
    assert f"--config {config}: size: must be >= 1, got 0" in capsys.readouterr().err
    config.write_text("colour: red\n")
    with pytest.raises(SystemExit):
        parser.parse(["--config", str(config)])
    assert f"--config {config}: unknown option(s) colour" in capsys.readouterr().err


def test_values_and_what_defines_a_run():
    toy = Toy(pair=(1, 2))
    assert flag_values(toy) == {
        "size": 3,
        "rate": 0.5,
        "kind": "a",
        "pair": [1, 2],
        "verbose": False,
        "path": None,
    }
    assert run_defining(toy) == {"size": 3}


def test_a_training_run_is_defined_by_the_fields_its_checkpoints_always_recorded():
    """Checkpoints written before the flags were typed record these fields: a resume compares
    them, so the set must stay (plus the recipe's own: seeding_warmup_steps,
    full_supervision)."""
    defined = run_defining(SyntheticDataArguments(), TrainingArguments())
    assert set(defined) == {
        "seed",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "optimizer",
        "learning_rate",
        "head_lr_multiplier",
        "momentum",
        "weight_decay",
        "lr_scheduler",
        "lr_decay_epochs",
        "warmup_steps",
        "lr_restart_at",
        "max_grad_norm",
        "crop_size",
        "scale_range",
        "deterministic",
        "dataset",
        "train_split",
    }


def test_push_without_a_repository_is_refused():
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        TrainingArguments(push_to_hub=True)
    assert TrainingArguments(with_tracking=True, report_to="none").with_tracking is False
