"""The faults a run meets on a shared cluster, each reproduced for real (a signal, a
second process, a truncated file, a bad image under 2 gloo processes) on the tiny config."""

import json
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_runs import RECIPE, ROOT, base_args, log, run
from workers import accelerate_launch, launch, spawn

from agen_hf.engine.checkpoints import checkpoint_problem, safetensors_problem


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def start(args, env, patch=""):
    """The recipe in a background process (stdout/stderr to files beside its output)."""
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(ROOT)!r})
        {textwrap.indent(textwrap.dedent(patch), "        ").strip()}
        sys.argv = [{str(RECIPE)!r}] + {list(map(str, args))!r}
        runpy.run_path({str(RECIPE)!r}, run_name="__main__")
    """)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_steps(out: Path, steps: int, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = out / "train_log.jsonl"
        if path.is_file() and len(path.read_text().splitlines()) >= steps:
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"exited {proc.returncode} before step {steps}:\n{proc.stderr.read()[-3000:]}"
            )
        time.sleep(0.02)
    raise AssertionError(f"no step {steps} within {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preempted_run_checkpoints_exits_75_and_the_same_command_resumes_it_exactly(
    tmp_path, env, sig
):
    """21.1 and 21.8: a signal at a random step (epoch-end checkpoints only, 4 steps an
    epoch): the step in progress finishes, is checkpointed, the exit status is 75; rerunning
    the very same command (--resume_from_checkpoint auto) ends bit-identical to an unbroken
    run, with each step logged once. ``auto`` starts the first run fresh."""
    args = lambda out: base_args(
        out, steps=12, extra=["--resume_from_checkpoint", "auto", "--eval_every_epochs", "0"]
    )
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run(args(straight), env)
    at = random.Random(sig).randint(2, 7)
    proc = start(args(broken), env)
    wait_for_steps(broken, at, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:]
    stopped = len(log(broken))
    assert stopped < 12 and f"stopped by {sig.name} after step {stopped}" in stderr
    assert (broken / f"checkpoint-{stopped}").is_dir()  # not only the last epoch end
    assert not (broken / "model.safetensors").exists()
    proc = run(args(broken), env)
    assert f"checkpoint-{stopped}" in proc.stderr and "resumed from" in proc.stderr
    assert same_weights(straight, broken)
    assert [r["step"] for r in log(broken)] == list(range(1, 13))
    assert [r["loss"] for r in log(broken)] == [r["loss"] for r in log(straight)]


def test_a_log_cut_by_sigkill_holds_each_step_once_after_the_resume(tmp_path, env):
    """Killed at step 5 with the last checkpoint at 3: steps 4-5 are trained and logged
    again, the log keeps them once."""
    out = tmp_path / "run"
    args = base_args(out, steps=8, extra=["--checkpointing_steps", "3"])
    kill_at_5 = """
        import os, signal, agen_hf.engine.loop as loop
        _log = loop.log_step
        def log_then_die(accelerator, state, *a, **k):
            record = _log(accelerator, state, *a, **k)
            if state.global_step == 5:
                os.kill(os.getpid(), signal.SIGKILL)
            return record
        loop.log_step = log_then_die
    """
    assert run(args, env, patch=kill_at_5, check=False).returncode == -9
    assert [r["step"] for r in log(out)] == [1, 2, 3, 4, 5]
    run(args + ["--resume_from_checkpoint", "latest"], env)
    assert [r["step"] for r in log(out)] == list(range(1, 9))


def test_a_run_owns_its_folder(tmp_path, env):
    """A fresh run over another run's checkpoints, a resume with other flags, a resume
    from an older checkpoint are refused, naming what; --overwrite_output_dir and
    --allow_schedule_change say what they did."""
    out = tmp_path / "run"
    run(
        base_args(
            out, steps=8, extra=["--checkpointing_steps", "2", "--checkpoints_total_limit", "none"]
        ),
        env,
    )
    assert len(list(out.glob("checkpoint-*"))) == 4  # none: every checkpoint kept
    proc = run(base_args(out, steps=8), env, check=False)
    assert proc.returncode == 1
    assert (
        "holds checkpoints checkpoint-2, checkpoint-4, checkpoint-6, checkpoint-8" in proc.stderr
        and "--overwrite_output_dir" in proc.stderr
    )
    proc = run(
        base_args(out, steps=8, batch=2) + ["--resume_from_checkpoint", "auto"], env, check=False
    )
    assert proc.returncode == 1 and "belongs to another run" in proc.stderr
    assert "per_device_train_batch_size: checkpoint 4, now 2" in proc.stderr
    assert "steps_per_epoch: checkpoint 4, now 8" in proc.stderr
    proc = run(
        base_args(out, steps=8, extra=["--seed", "7", "--resume_from_checkpoint", "auto"]),
        env,
        check=False,
    )
    assert proc.returncode == 1 and "seed: checkpoint 42, now 7" in proc.stderr
    proc = run(
        base_args(out, steps=8, extra=["--resume_from_checkpoint", str(out / "checkpoint-4")]),
        env,
        check=False,
    )
    assert (
        proc.returncode == 1
        and "holds checkpoints checkpoint-6, checkpoint-8 of a later run" in proc.stderr
    )
    # a longer schedule: refused, then accepted with the flag, and said so
    proc = run(
        base_args(out, steps=10, extra=["--resume_from_checkpoint", "auto"]), env, check=False
    )
    assert (
        "max_steps: checkpoint 8, now 10" in proc.stderr
        and "--allow_schedule_change accepts" in proc.stderr
    )
    proc = run(
        base_args(
            out, steps=10, extra=["--resume_from_checkpoint", "auto", "--allow_schedule_change"]
        ),
        env,
    )
    assert (
        "with a changed schedule (--allow_schedule_change): max_steps: checkpoint 8, "
        "now 10" in proc.stderr
    )
    assert [r["step"] for r in log(out)] == list(range(1, 11))
    proc = run(base_args(out, steps=3, extra=["--overwrite_output_dir"]), env)
    assert "--overwrite_output_dir: deleted checkpoint-" in proc.stderr
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert [r["step"] for r in log(out)] == [1, 2, 3]


def test_a_second_writer_is_stopped_naming_the_first(tmp_path, env):
    """21.2 and 21.8 (two runs, one folder): the second is refused with the first's host and
    pid, and nothing of the first is touched; once the first is dead (SIGKILL leaves its lock),
    a new start takes the folder over."""
    out = tmp_path / "run"
    slow = """
        import time, agen_hf.engine.loop as loop
        _step = loop.training_step
        def slow_step(*a, **k):
            time.sleep(3)
            return _step(*a, **k)
        loop.training_step = slow_step
    """
    args = base_args(
        out, steps=8, extra=["--checkpointing_steps", "1", "--resume_from_checkpoint", "auto"]
    )
    first = start(args, env, patch=slow)
    try:
        wait_for_steps(out, 1, first)
        proc = run(args, env, check=False)
        assert proc.returncode == 1
        assert (
            f"is being written by another run: pid {first.pid} on host "
            f"{socket.gethostname()}" in proc.stderr
        )
        assert first.poll() is None
    finally:
        first.kill()
        first.communicate()
    assert json.loads((out / ".agen-run.lock").read_text())["pid"] == first.pid
    proc = run(args, env)
    assert f"taking over {out / '.agen-run.lock'} from pid {first.pid}" in proc.stderr
    assert not (out / ".agen-run.lock").exists()  # released at exit
    assert [r["step"] for r in log(out)] == list(range(1, 9))


def test_a_truncated_checkpoint_is_reported_and_skipped(tmp_path, env):
    """The newest checkpoint's weights cut short (a full disk): ``auto`` names it, resumes
    from the one before and ends as the unbroken run; given by path, it is refused naming the
    problem."""
    args = lambda out: base_args(out, steps=8, extra=["--checkpointing_steps", "3"])
    straight, out = tmp_path / "straight", tmp_path / "run"
    run(args(straight), env)
    run(args(out), env)
    weights = out / "checkpoint-8" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(size // 2)
    (out / "model.safetensors").unlink()
    proc = run(
        args(out) + ["--resume_from_checkpoint", str(out / "checkpoint-8")], env, check=False
    )
    assert (
        proc.returncode == 1
        and f"{out / 'checkpoint-8'}: not a complete checkpoint "
        f"(model.safetensors has {size // 2} bytes, {size} were written)"
        in proc.stderr
    )
    proc = run(args(out) + ["--resume_from_checkpoint", "auto"], env)
    assert (
        f"skipping broken checkpoint {out / 'checkpoint-8'}: model.safetensors has" in proc.stderr
        and f"resumed from {out / 'checkpoint-6'}" in proc.stderr
    )
    assert same_weights(straight, out)
    assert checkpoint_problem(out / "checkpoint-8") is None  # written again


def test_safetensors_checks_without_a_file_list(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.arange(100.0)}, path)
    assert safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert "is truncated" in safetensors_problem(path)
    path.write_bytes(data[:5])
    assert safetensors_problem(path) == "model.safetensors is truncated (5 bytes)"
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    (folder / "trainer_state.json").write_text('{"global_step": 1')
    assert "trainer_state.json cannot be read" in checkpoint_problem(folder)
    (folder / "trainer_state.json").write_text('{"global_step": 1}')  # agen_hf <= 0.2
    path.rename(folder / "model.safetensors")
    assert checkpoint_problem(folder) == "model.safetensors is truncated (5 bytes)"


def test_a_kill_during_the_final_save_leaves_the_previous_model_whole(tmp_path, env):
    """The final model goes through a temporary folder: SIGKILL after its weights are
    written there leaves the model of the run before loadable and unchanged."""
    from agen_hf import AgenModel

    out = tmp_path / "run"
    run(base_args(out, steps=2), env)
    before = (out / "model.safetensors").read_bytes()
    die_in_final_save = """
        import os, signal, agen_hf.engine.checkpoints as ck
        def die(tmp, folder):
            assert (tmp / "model.safetensors").is_file()
            os.kill(os.getpid(), signal.SIGKILL)
        ck.replace_files = die
        import agen_hf.engine.run as run
        run.replace_files = die
    """
    proc = run(
        base_args(out, steps=3, extra=["--overwrite_output_dir"]),
        env,
        patch=die_in_final_save,
        check=False,
    )
    assert proc.returncode == -9
    assert (out / "model.safetensors").read_bytes() == before
    AgenModel.from_pretrained(out)
    run(base_args(out, steps=3, extra=["--resume_from_checkpoint", "auto"]), env)
    assert (out / "model.safetensors").read_bytes() != before
    assert not (out / ".tmp-model").exists()


def test_a_non_finite_gradient_is_skipped_never_applied(tmp_path, env):
    """A NaN in one gradient with a finite loss (a bf16/fp16 overflow in the backward):
    the step is skipped, logged and counted like a NaN loss; every weight stays finite."""
    nan_grad_at = """
        import accelerate
        _backward, calls = accelerate.Accelerator.backward, []
        def backward(self, loss, **k):
            _backward(self, loss, **k)
            calls.append(1)
            if len(calls) in BAD:
                p = next(q for q in self._models[0].parameters() if q.grad is not None)
                p.grad.view(-1)[0] = float("nan")
        accelerate.Accelerator.backward = backward
    """
    out = tmp_path / "some"
    proc = run(base_args(out, steps=6), env, patch="BAD = {2}\n" + textwrap.dedent(nan_grad_at))
    assert proc.stderr.count("non-finite gradient") == 1
    assert len(log(out)) == 6
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    out = tmp_path / "all"
    proc = run(
        base_args(out, steps=6, extra=["--max_nonfinite_steps", "3", "--max_grad_norm", "1"]),
        env,
        patch="BAD = set(range(100))\n" + textwrap.dedent(nan_grad_at),
        check=False,
    )
    assert proc.returncode == 1 and "3 non-finite losses in a row" in proc.stderr
    assert not list(out.glob("checkpoint-*"))  # nothing non-finite was checkpointed


def test_a_bad_image_under_two_gloo_processes_is_replaced_the_same_way_every_time(tmp_path, env):
    """A truncated PNG in a user's folder, 2 gloo processes, --skip_bad_samples: every
    batch keeps its size (the bad image is replaced by a deterministic substitute), the run
    finishes, reports the replacement with exit 3, and a rerun equals it bit for bit."""
    from folder_fixtures import make_folder

    photos = make_folder(tmp_path / "photos", n=10)
    data = (photos / "img03.png").read_bytes()
    (photos / "img03.png").write_bytes(data[: len(data) // 2])
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        args = [
            "--train_dir",
            str(photos),
            "--model_config",
            "tiny",
            "--max_train_steps",
            "6",
            "--per_device_train_batch_size",
            "2",
            "--num_workers",
            "0",
            "--deterministic",
            "--boundary_crf",
            "torch",
            "--skip_bad_samples",
            "--ddp_timeout",
            "60",
            "--output_dir",
            str(out),
        ]
        if out == outs[0]:
            # the launcher (torchrun) turns its workers' 3 into 1 and names the first
            job = launch(accelerate_launch([str(RECIPE), *args]), env, tmp_path / "logs-a")
            assert job.returncode == 1 and "exitcode  : 3" in job.log, job.tail(60)
            logs = job.log
        else:  # the workers as srun starts them: each one's own status is 3
            workers = spawn([sys.executable, str(RECIPE), *args], env, tmp_path / "logs-b")
            assert [w.returncode for w in workers] == [3, 3], "\n".join(w.tail() for w in workers)
            logs = "".join(w.log for w in workers)
        assert "img03.png" in logs and "bad training samples were replaced" in logs
        assert [r["step"] for r in log(out)] == list(range(1, 7))
        assert json.loads((out / "eval_results.json").read_text())["bad_samples_replaced"] >= 1
    assert same_weights(*outs)
    assert [r["loss"] for r in log(outs[0])] == [r["loss"] for r in log(outs[1])]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--checkpoints_total_limit", "0", "must be >= 1, got 0"),
        ("--checkpoints_total_limit", "-1", "must be >= 1, got -1"),
        ("--max_train_steps", "0", "must be >= 1, got 0"),
        ("--per_device_train_batch_size", "0", "must be >= 1, got 0"),
        ("--gradient_accumulation_steps", "-2", "must be >= 1, got -2"),
        ("--learning_rate", "-0.1", "must be >= 0.0, got -0.1"),
        ("--momentum", "1.5", "must be >= 0.0 and < 1.0, got 1.5"),
        ("--num_workers", "-1", "must be >= 0, got -1"),
        ("--synthetic_image_size", "8", "must be >= 16, got 8"),
    ],
)
def test_invalid_numbers_are_refused_at_start(flag, value, message, capsys, tmp_path):
    """On the command line and in a --config file alike."""
    import runpy

    recipe = runpy.run_path(str(RECIPE))
    with pytest.raises(SystemExit) as e:
        recipe["parse_args"]([flag, value])
    assert e.value.code == 2 and f"argument {flag}: {message}" in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text(f"{flag[2:]}: {value}\n")
    with pytest.raises(SystemExit):
        recipe["parse_args"](["--config", str(config)])
    assert f"{flag[2:]}: {message}" in capsys.readouterr().err
