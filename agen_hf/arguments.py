"""Typed command-line arguments, as transformers' ``HfArgumentParser`` has them: a recipe's
flags are the fields of a few dataclasses (:class:`agen_hf.data.sources.DataArguments`,
:class:`agen_hf.engine.arguments.TrainingArguments`, ...), each field carrying its flag's help,
parsing type and choices (:func:`flag`), and :class:`ArgumentParser` generates argparse from
them. Below the recipes the library takes these objects or keyword arguments, never an
argparse ``Namespace``.

``--config FILE`` (YAML or JSON, field names as keys) supplies defaults that the command line
overrides; every value goes through its flag's own parsing, so a file is checked exactly like
the command line, and a bad or unknown key is an error naming the file and the key. Errors are
argparse's: a message naming the flag and exit status 2."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml


def at_least(low: float, kind: type = int, high: float | None = None) -> Callable[[str], Any]:
    """A flag's type: a ``kind`` number >= ``low`` (and < ``high``), refused otherwise with the
    flag's name (on the command line and in ``--config`` files alike)."""

    def parse(text: str):
        value = kind(text)  # a ValueError: argparse's "invalid int value: '1.5'"
        if value < low or (high is not None and value >= high) or value != value:
            bound = f">= {low}" + (f" and < {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def above(low: float) -> Callable[[str], float]:
    """A flag's type: a float > ``low`` (a time limit, a rate), refused otherwise."""

    def parse(text: str) -> float:
        value = float(text)
        if not value > low:  # NaN too
            raise argparse.ArgumentTypeError(f"must be > {low}, got {text}")
        return value

    parse.__name__ = "float"
    return parse


positive = at_least(1)
non_negative = at_least(0)


def json_object(text: str) -> dict:
    """A flag's type: a JSON object (a backbone's options), refused otherwise."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text}")
    return value


def flag(
    default: Any = None,
    help: str | None = None,
    *,
    type: Callable[[str], Any] | None = None,
    choices: Sequence | None = None,
    nargs: int | str | None = None,
    aliases: Sequence[str] = (),
    metavar: str | None = None,
    required: bool = False,
    group: str | None = None,
    run: bool = False,
) -> Any:
    """A dataclass field that is a command-line flag ``--<field name>`` (and ``aliases``).

    ``type`` parses one value (``int``, :func:`at_least`, ...; default: ``str``, or the type of
    a number default); a bool field defaulting to False is a switch (``store_true``);
    ``nargs``, ``choices``, ``metavar``, ``required`` are argparse's; ``group`` the ``--help``
    section (default: the dataclass's ``group``); ``run``: the value defines a training run
    and goes into its checkpoints' fingerprint (:func:`run_defining`)."""
    metadata = {
        "help": help,
        "type": type,
        "choices": choices,
        "nargs": nargs,
        "aliases": tuple(aliases),
        "metavar": metavar,
        "required": required,
        "group": group,
        "run": run,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with every flag's default, except where there is none to show (None) or the
    help already says what it defaults to."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default is None or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def _add_field(group, field: dataclasses.Field) -> None:
    meta = field.metadata
    default = field.default_factory() if callable(field.default_factory) else field.default
    names = [f"--{field.name}", *meta.get("aliases", ())]
    kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": meta.get("help")}
    if default is False and meta.get("type") is None and meta.get("choices") is None:
        group.add_argument(*names, action="store_true", **kwargs)
        return
    kind = meta.get("type")
    if kind is None and isinstance(default, (int, float)) and not isinstance(default, bool):
        kind = type(default)
    for key in ("choices", "nargs", "metavar"):
        if meta.get(key) is not None:
            kwargs[key] = meta[key]
    if meta.get("required"):
        kwargs["required"] = True
    group.add_argument(*names, type=kind, **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """argparse generated from dataclasses of :func:`flag` fields: :meth:`parse` returns one
    instance of each. With ``config_file``, ``--config FILE`` gives defaults (module
    docstring). A ``ValueError`` that a dataclass raises for its own values (its
    ``__post_init__``) becomes an argparse error naming it (exit status 2)."""

    def __init__(self, *dataclass_types: type, config_file: bool = False, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)
        self.dataclass_types = dataclass_types
        self.config_file = config_file
        if config_file:
            self.add_argument(
                "--config", help="YAML or JSON file of flag values (dest names as keys)"
            )
        groups: dict[str, Any] = {}
        for cls in dataclass_types:
            for field in dataclasses.fields(cls):
                name = field.metadata.get("group") or getattr(cls, "group", None)
                if name not in groups:
                    groups[name] = self if name is None else self.add_argument_group(name)
                _add_field(groups[name], field)

    def parse(self, argv: Sequence[str] | None = None) -> tuple:
        """One instance of each dataclass, from ``argv`` (and ``--config``)."""
        if self.config_file:
            known, _ = self.parse_known_args(argv)
            if known.config:
                self.set_defaults(**config_file_values(self, Path(known.config)))
        namespace = vars(self.parse_args(argv))
        try:
            return tuple(
                cls(**{f.name: namespace[f.name] for f in dataclasses.fields(cls)})
                for cls in self.dataclass_types
            )
        except ValueError as e:
            self.error(str(e))


def config_file_values(parser: argparse.ArgumentParser, path: Path) -> dict:
    """The values of a ``--config`` file, each parsed by its flag's action."""
    try:
        text = path.read_text()
        values = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        parser.error(f"--config {path}: cannot read it ({e})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(values) - set(actions) - {"config"})
    if unknown:
        parser.error(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    parsed = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or value is None:
            continue
        if action.nargs == 0:  # store_true / store_false
            if not isinstance(value, bool):
                parser.error(f"--config {path}: {key}: expected true or false, got {value!r}")
            parsed[key] = value if isinstance(action, argparse._StoreTrueAction) else not value
            continue
        if isinstance(value, dict):  # a JSON-object flag (a backbone's options)
            tokens = [json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            tokens = [str(v) for v in value]
        else:
            tokens = [str(value)]
        probe = argparse.ArgumentParser(add_help=False, exit_on_error=False)
        probe._add_action(copy.copy(action))
        try:
            parsed[key] = getattr(probe.parse_args([action.option_strings[0], *tokens]), key)
        except argparse.ArgumentError as e:
            parser.error(f"--config {path}: {key}: {e.message}")
    return parsed


def flag_values(*instances: Any) -> dict:
    """Every flag's value of these argument dataclasses, by field name (tuples as lists,
    paths as strings): what a run's settings and its trackers' config are made of."""
    out = {}
    for instance in instances:
        for field in dataclasses.fields(instance):
            value = getattr(instance, field.name)
            if isinstance(value, tuple):
                value = list(value)
            out[field.name] = str(value) if isinstance(value, Path) else value
    return out


def run_defining(*instances: Any) -> dict:
    """The values of the fields declared ``run=True``: what defines a training run (its
    checkpoints' fingerprint)."""
    return {
        field.name: getattr(instance, field.name)
        for instance in instances
        for field in dataclasses.fields(instance)
        if field.metadata.get("run")
    }
