"""Multi-process runs that cannot hang the suite: every process starts in a new process
session, and a run past its time limit kills every process group it made (data-loader and CRF
workers included) and fails the test with each process's last lines."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def patched(script: Path, args: list, patch: str = "") -> list[str]:
    """The command that runs ``script`` with ``args`` in a fresh interpreter after ``patch``
    (Python, run first: what the script imports by name afterwards is the patched object)."""
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(ROOT)!r})
        {textwrap.indent(textwrap.dedent(patch), "        ").strip()}
        sys.argv = [{str(script)!r}] + {list(map(str, args))!r}
        runpy.run_path({str(script)!r}, run_name="__main__")
    """)
    return [sys.executable, "-c", code]


@dataclass
class Worker:
    rank: int
    returncode: int
    log: str

    def tail(self, lines: int = 25) -> str:
        return f"--- process {self.rank} (exit {self.returncode}) ---\n" + "\n".join(
            self.log.splitlines()[-lines:]
        )


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc: torchrun starts its workers in sessions
    of their own, out of the launcher's process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_everything(procs: list[subprocess.Popen]) -> None:
    pids = [p.pid for p in procs] + [d for p in procs for d in _descendants(p.pid)]
    for pid in pids:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for p in procs:
        p.wait()


def _run(commands: list[tuple[list[str], dict]], logs: list[Path], timeout: float) -> list[int]:
    procs = []
    for (cmd, env), log in zip(commands, logs):
        with open(log, "w") as f:
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=ROOT,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _kill_everything(procs)
        tails = "\n".join(
            Worker(i, p.returncode, log.read_text()).tail()
            for i, (p, log) in enumerate(zip(procs, logs))
        )
        pytest.fail(f"hung: still running after {timeout} s, killed\n{tails}")
    for p in procs:  # a worker's own children (loader workers, a CRF pool) end with it
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return [p.returncode for p in procs]


def spawn(
    command: list[str], env: dict, folder: Path, processes: int = 2, timeout: float = 120
) -> list[Worker]:
    """``command`` as ``processes`` data-parallel workers started directly, as
    ``launch/slurm.sbatch``'s srun starts them (``RANK``, ``WORLD_SIZE``, ... in the
    environment), each with its own exit status."""
    port = free_port()
    commands = [
        (
            command,
            {
                **env,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(processes),
                "LOCAL_WORLD_SIZE": str(processes),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
        )
        for rank in range(processes)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    logs = [folder / f"process-{rank}.log" for rank in range(processes)]
    codes = _run(commands, logs, timeout)
    return [
        Worker(rank, code, log.read_text()) for rank, (code, log) in enumerate(zip(codes, logs))
    ]


def launch(command: list[str], env: dict, folder: Path, timeout: float = 120) -> Worker:
    """A launcher (``accelerate launch``, ``torchrun``) and the workers it starts, killed
    together past ``timeout``."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "launcher.log"
    (code,) = _run([(command, env)], [log], timeout)
    return Worker(0, code, log.read_text())


def accelerate_launch(script_and_args: list[str], processes: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "launch" / "cpu_ddp_2proc.yaml"),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        *script_and_args,
    ]


def torchrun(script_and_args: list[str], processes: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_port",
        str(free_port()),
        *script_and_args,
    ]
