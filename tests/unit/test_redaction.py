"""Secrets never reach a model card, a tracker config or a log (agen_hf.engine.redaction)."""

from agen_hf.engine.redaction import (
    REDACTED,
    command_line,
    redact_args,
    redact_argv,
    redact_text,
    run_settings,
)

TOKEN = "hf_" + "A1b2C3d4" * 5  # shaped like a real Hub token
ENV = {"HF_TOKEN": "env-secret-value", "PATH": "/usr/bin"}


def test_credential_flags_are_hidden_in_both_spellings():
    argv = [
        "--hub_token",
        "plain-secret",
        "--output_dir",
        "runs/x",
        "--wandb_api_key=k3y",
        "--hub_model_id",
        "me/agen",
    ]
    assert redact_argv(argv, environ={}) == [
        "--hub_token",
        REDACTED,
        "--output_dir",
        "runs/x",
        f"--wandb_api_key={REDACTED}",
        "--hub_model_id",
        "me/agen",
    ]


def test_env_tokens_and_hub_shaped_tokens_are_hidden_wherever_they_appear():
    argv = ["--note", f"pushed with {TOKEN}", "--output_dir", "runs/env-secret-value"]
    assert redact_argv(argv, environ=ENV) == [
        "--note",
        f"pushed with {REDACTED}",
        "--output_dir",
        f"runs/{REDACTED}",
    ]
    assert redact_text("PATH is /usr/bin", environ=ENV) == "PATH is /usr/bin"  # not a secret
    # short env values are not treated as secrets (they would blank out common words)
    assert redact_text("a b c", environ={"HF_TOKEN": "a"}) == "a b c"


def test_command_line_for_the_model_card():
    argv = ["--hub_token", TOKEN, "--seed", "1"]
    cmd = command_line("recipes/train_voc.py", argv, environ={})
    assert TOKEN not in cmd
    assert cmd == f"python recipes/train_voc.py --hub_token '{REDACTED}' --seed 1"
    # the launcher as the process sees it: accelerate's variables, or a multi-process launch
    launched = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no"}
    assert command_line("s.py", ["--seed", "1"], environ=launched) == (
        "accelerate launch --cpu s.py --seed 1"
    )
    assert command_line("s.py", [], environ={"ACCELERATE_USE_CPU": "False"}, num_processes=4) == (
        "accelerate launch --num_processes 4 s.py "
    )
    assert command_line("s.py", [], environ={}, num_processes=2).startswith(
        "torchrun --nproc_per_node 2 s.py"
    )


def test_run_settings_hold_every_set_flag_but_credentials():
    values = dict(config="run.yaml", hub_token="x", seed=3, scale_range=(64, 96), hub_model_id=None)
    assert run_settings(values) == {"seed": 3, "scale_range": [64, 96]}


def test_tracker_config_keeps_every_key_and_hides_secret_values():
    values = dict(
        hub_token="plain-secret",
        seed=3,
        lr=0.1,
        flag=True,
        scale_range=[0.5, 1.0],
        note="env-secret-value and plain-secret",
        wandb_api_key=None,
    )
    config = redact_args(values, environ=ENV)
    assert config == {
        "hub_token": REDACTED,
        "seed": 3,
        "lr": 0.1,
        "flag": True,
        "scale_range": "[0.5, 1.0]",
        "note": f"{REDACTED} and {REDACTED}",
        "wandb_api_key": "None",
    }
