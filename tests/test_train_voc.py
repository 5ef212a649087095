"""The training recipe, run as a user runs it (subprocesses), on the tiny config and a few
synthetic images."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "train_voc.py"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-cache")
    return {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def base_args(out, steps=8, batch=4, extra=()):
    return ["--dataset", "synthetic", "--model_config", "tiny", "--synthetic_size", "16",
            "--synthetic_val_size", "4", "--synthetic_image_size", "64",
            "--per_device_train_batch_size", str(batch), "--max_train_steps", str(steps),
            "--num_workers", "0", "--deterministic", "--boundary_crf", "torch",
            "--output_dir", str(out), *extra]


def run(args, env, patch="", launcher=None, check=True):
    """Run the recipe in a fresh interpreter, after ``patch`` (Python) has run there."""
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(ROOT)!r})
        {textwrap.indent(textwrap.dedent(patch), '        ').strip()}
        sys.argv = [{str(RECIPE)!r}] + {list(map(str, args))!r}
        runpy.run_path({str(RECIPE)!r}, run_name="__main__")
    """)
    cmd = launcher or [sys.executable]
    proc = subprocess.run([*cmd, "-c", script] if launcher is None else [*cmd, str(RECIPE),
                                                                          *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def log(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def test_a_few_steps_lower_the_loss_and_save_a_loadable_model(tmp_path, env):
    out = tmp_path / "run"
    proc = run(base_args(out, steps=24, extra=["--synthetic_size", "8", "--cam_figure", "2"]),
               env)
    losses = [r["loss"] for r in log(out)]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert "val mIoU (image-level supervision)" in proc.stdout
    results = json.loads((out / "eval_results.json").read_text())
    assert 0 <= results["val_mean_iou"] <= 1 and len(results["val_per_category_iou"]) == 21
    from agen_hf import AgenModel

    model = AgenModel.from_pretrained(out)
    assert model.config.agm_stages == (3, 4, 5)
    card = (out / "README.md").read_text()
    assert "| **mIoU** |" in card and "recipes/train_voc.py" in card
    record = log(out)[-1]
    assert {"cls_A", "cls_agm3", "seg_B", "seg_agm5", "boundary", "lr", "coam3_lambda"} <= set(record)
    # --cam_figure 2: two val images x (input, ground truth, A, AGM-5/4/3 before and after
    # CoAM, B's prediction) in 160-pixel cells
    from PIL import Image

    assert f"written {out / 'cams.png'}" in proc.stdout
    with Image.open(out / "cams.png") as figure:
        assert figure.format == "PNG" and figure.size == (10 * 164 + 4, 16 + 2 * 164 + 4)
        figure.load()


def test_resume_after_sigkill_is_bit_identical(tmp_path, env):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = lambda out: base_args(out, steps=8, extra=["--checkpointing_steps", "3"])
    run(args(straight), env)
    kill_after_first_checkpoint = """
        import os, signal, agen_hf.engine.loop as engine
        _save = engine.save_checkpoint
        def save_then_die(accelerator, output_dir, step, state, keep_last=None):
            path = _save(accelerator, output_dir, step, state, keep_last)
            if step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return path
        engine.save_checkpoint = save_then_die
    """
    proc = run(args(resumed), env, patch=kill_after_first_checkpoint, check=False)
    assert proc.returncode == -9
    assert [p.name for p in resumed.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-3"]
    run(args(resumed) + ["--resume_from_checkpoint", "latest"], env)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in log(straight)][3:] == [r["loss"] for r in log(resumed)][3:]


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path, env):
    out = tmp_path / "run"
    args = base_args(out, steps=8, extra=["--checkpointing_steps", "3"])
    die_while_saving_the_second = """
        import os, signal, accelerate.checkpointing as ck
        _save, calls = ck.save, []
        def save(obj, path, *a, **k):
            if "optimizer" in str(path):
                calls.append(path)
                if len(calls) == 2:  # checkpoint-4 (epoch end): weights written, optimizer not
                    os.kill(os.getpid(), signal.SIGKILL)
            return _save(obj, path, *a, **k)
        ck.save = save
    """
    proc = run(args, env, patch=die_while_saving_the_second, check=False)
    assert proc.returncode == -9
    assert (out / ".tmp-checkpoint-4" / "model.safetensors").exists()
    assert not (out / "checkpoint-4").exists()
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert load_file(out / "checkpoint-3" / "model.safetensors")
    proc = run(args + ["--resume_from_checkpoint", "latest"], env)
    assert "resumed from" in proc.stderr and "checkpoint-3" in proc.stderr
    assert not (out / ".tmp-checkpoint-4").exists() and (out / "checkpoint-6").exists()
    assert [r["step"] for r in log(out)][-1] == 8


def test_nan_loss_is_skipped_and_logged_then_aborts_when_persistent(tmp_path, env):
    nan_at = """
        import agen_hf.modeling_agen as m
        _forward, calls = m.AgenModel.forward, []
        def forward(self, *a, **k):
            out = _forward(self, *a, **k)
            if out.loss is not None:
                calls.append(1)
                if len(calls) in BAD:
                    out.loss = out.loss * float("nan")
            return out
        m.AgenModel.forward = forward
    """
    out = tmp_path / "some"
    proc = run(base_args(out, steps=6), env, patch="BAD = {2, 3}\n" + textwrap.dedent(nan_at))
    assert proc.stderr.count("non-finite loss") == 2
    assert len(log(out)) == 6 and all(r["loss"] == r["loss"] for r in log(out))
    out = tmp_path / "all"
    proc = run(base_args(out, steps=6, extra=["--max_nonfinite_steps", "3"]), env,
               patch="BAD = set(range(100))\n" + textwrap.dedent(nan_at), check=False)
    assert proc.returncode != 0 and "3 non-finite losses in a row" in proc.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path, env):
    config = tmp_path / "tiny_frozen.json"
    from agen_hf import AgenConfig

    # no dropout, no batch statistics: per-sample computations, as equality needs (on GPUs,
    # --sync_bn would do for batch norm)
    AgenConfig.tiny(resnet_dropout=(0.0, 0.0), freeze_batch_norm=True,
                    vgg_batch_norm=False).to_json_file(config)
    common = ["--model_config", str(config), "--max_train_steps", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    run(base_args(one, batch=8) + common, env)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "launch" / "cpu_ddp_2proc.yaml"), "--main_process_port",
                str(free_port())]
    run(base_args(two, batch=4) + common, env, launcher=launcher)
    l1, l2 = log(one), log(two)
    assert len(l1) == len(l2) == 4
    for r1, r2 in zip(l1, l2):
        for key in ("loss", "cls_A", "seg_B", "seg_agm3", "boundary"):
            assert abs(r1[key] - r2[key]) < 1e-5, (r1["step"], key, r1[key], r2[key])


def test_full_supervision_tracking_and_a_failed_push(tmp_path, env):
    pytest.importorskip("tensorboard")
    out = tmp_path / "full"
    flag_token, env_token = "hf_" + "Fl4gT0ken" * 4, "env-only-secret-9271"
    proc = run(base_args(out, steps=5, extra=[
        "--full_supervision", "--preset", "baseline", "--with_tracking", "--logging_steps", "1",
        "--push_to_hub", "--hub_model_id", "someone/agen-test", "--hub_token", flag_token,
        "--hub_model_id=someone/agen-test"]), {**env, "HF_TOKEN": env_token})
    # no token in anything the run wrote (model card, tracker config and events, logs,
    # trainer_state.json) nor in what it printed
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "README.md" for p in written)
    assert any(p.name == "trainer_state.json" for p in written)
    for p in written:
        data = p.read_bytes()
        assert flag_token.encode() not in data and env_token.encode() not in data, p
    assert "--hub_token '<redacted>'" in (out / "README.md").read_text()
    assert flag_token not in proc.stdout + proc.stderr
    assert "val mIoU (full supervision)" in proc.stdout
    assert set(log(out)[0]) >= {"seg_B_full", "loss"}
    assert json.loads((out / "config.json").read_text())["agm_stages"] == []
    # offline: the push fails, is reported, and the local model is intact
    assert "push to the Hub failed" in proc.stderr
    assert (out / "model.safetensors").exists()
    assert "push_error" in json.loads((out / "eval_results.json").read_text())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [p for p in out.rglob("events.out.tfevents.*")]
    assert events
    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/seg_B_full", "train/lr", "val/mean_iou", "val/iou_background"} <= tags


def test_config_file_and_bad_flags(tmp_path, env):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("preset: sc\nlearning_rate: 0.002\noptimizer: adamw\nlr_scheduler: cosine\n"
                   "warmup_steps: 2\nseeding_warmup_steps: 1\n")
    out = tmp_path / "cfg"
    run(base_args(out, steps=2) + ["--config", str(cfg), "--eval_every_epochs", "0",
                                   "--checkpointing_steps", "2"], env)
    saved = json.loads((out / "config.json").read_text())
    assert saved["agm_stages"] == [4] and saved["coam_stages"] == [4]
    first, second = log(out)
    assert first["lr"] == pytest.approx(0.001) and second["lr"] == pytest.approx(0.002)
    # classification first: eq. 11 alone for the first step, then every loss
    assert set(first) - {"step", "epoch", "loss", "lr", "coam4_lambda"} == {"cls_A", "cls_agm4"}
    assert first["loss"] == pytest.approx(first["cls_A"] + first["cls_agm4"])
    assert {"seg_B", "seg_agm4", "boundary"} <= set(second)
    state = torch.load(next(out.glob("checkpoint-*")) / "optimizer.bin", weights_only=True)
    assert "exp_avg_sq" in next(iter(state["state"].values()))  # AdamW's, not SGD's
    cfg.write_text("presett: sc\n")
    proc = run(base_args(out, steps=2) + ["--config", str(cfg)], env, check=False)
    assert proc.returncode == 2 and "unknown option(s) presett" in proc.stderr
    proc = run(["--dataset", "voc"], env, check=False)
    assert proc.returncode == 2 and "--voc_root" in proc.stderr
