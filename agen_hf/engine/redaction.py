"""Secrets never leave the machine: what the recipes write about their own arguments (the
model card's command, the tracker config) goes through here first. (``trainer_state.json``
holds only the loop's position, never an argument.)

A value is secret when its flag names a credential (``--hub_token``, anything with
``token``, ``secret``, ``password`` or ``api_key`` in its name), when it equals a credential
read from the environment (``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, ``WANDB_API_KEY``), or
when it looks like a Hugging Face access token (``hf_`` + 30 or more letters and digits)."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping

REDACTED = "<redacted>"
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")
_SECRET_NAME = re.compile(r"token|secret|password|api_key", re.IGNORECASE)
_HF_TOKEN = re.compile(r"hf_[A-Za-z0-9]{30,}")


def is_secret_name(name: str) -> bool:
    """Whether an argument called ``name`` (``--hub_token``, ``hub_token``) holds a secret."""
    return bool(_SECRET_NAME.search(name.lstrip("-")))


def _env_secrets(environ: Mapping[str, str] | None) -> list[str]:
    environ = os.environ if environ is None else environ
    return [v for k in SECRET_ENV_VARS if len(v := environ.get(k, "")) >= 4]


def redact_text(
    text: str, secrets: list[str] = (), environ: Mapping[str, str] | None = None
) -> str:
    """``text`` with every known secret and every ``hf_...`` token replaced by REDACTED."""
    for secret in sorted({*secrets, *_env_secrets(environ)}, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return _HF_TOKEN.sub(REDACTED, text)


def redact_argv(argv: list[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """``argv`` with the value of every credential flag (``--hub_token X`` and
    ``--hub_token=X``) and every other secret replaced by REDACTED."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
        elif arg.startswith("--") and "=" in arg and is_secret_name(arg.split("=", 1)[0]):
            out.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            hide_next = arg.startswith("--") and is_secret_name(arg)
            out.append(redact_text(arg, environ=environ))
    return out


def launcher(num_processes: int = 1, environ: Mapping[str, str] | None = None) -> str:
    """How this run was started, as far as its process can tell: ``accelerate launch`` (whose
    launcher leaves ``ACCELERATE_*`` variables; ``--cpu`` when it forced the CPU,
    ``--num_processes N`` for several), ``torchrun --nproc_per_node N`` for another
    multi-process launcher (torchrun, srun), else ``python``."""
    environ = os.environ if environ is None else environ
    if any(key.startswith("ACCELERATE_") for key in environ):
        words = ["accelerate", "launch"]
        if environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1"):
            words.append("--cpu")
        if num_processes > 1:
            words += ["--num_processes", str(num_processes)]
        return " ".join(words)
    if num_processes > 1:
        return f"torchrun --nproc_per_node {num_processes}"
    return "python"


def command_line(
    script: str,
    argv: list[str],
    environ: Mapping[str, str] | None = None,
    num_processes: int = 1,
) -> str:
    """The command that started the run (:func:`launcher`, the script, its arguments), safe
    to publish in a model card."""
    return f"{launcher(num_processes, environ)} {script} " + shlex.join(redact_argv(argv, environ))


def run_settings(values: Mapping) -> dict:
    """Every flag's value after ``--config`` and the command line were merged
    (:func:`agen_hf.arguments.flag_values`), as a ``--config`` file takes them back: the run's
    settings, wherever they came from. Unset flags, ``config`` itself and credentials (which
    nobody else can reuse) are left out."""
    settings = {}
    for key, value in values.items():
        if value is None or key == "config" or is_secret_name(key):
            continue
        if isinstance(value, tuple):
            value = list(value)
        settings[key] = os.fspath(value) if isinstance(value, os.PathLike) else value
    return settings


def redact_args(values: Mapping, environ: Mapping[str, str] | None = None) -> dict:
    """A tracker config: every flag's value as an int/float/str/bool, secrets redacted (a
    credential flag that was not given stays None-as-string, so the key is still visible)."""
    values = dict(values)
    secrets = [str(v) for k, v in values.items() if is_secret_name(k) and v]
    out = {}
    for key, value in values.items():
        if is_secret_name(key) and value:
            out[key] = REDACTED
        elif isinstance(value, (bool, int, float)):
            out[key] = value
        else:
            out[key] = redact_text(str(value), secrets, environ)
    return out
