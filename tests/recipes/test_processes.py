"""What needs processes of its own: two processes that measure bf16 take one decision, and
freed memory kept for reuse spares every step its page faults (fresh interpreters)."""

import platform
import sys

import pytest

from agen_hf.engine import precision


def test_processes_that_measure_take_one_decision(tmp_path):
    """Under a 2-process CPU launch each process measures bf16; the slowest figure decides
    for all, so no two processes train in different precisions."""
    import os
    import sys

    from workers import ROOT, spawn

    script = tmp_path / "agree.py"
    script.write_text(
        "import os\nfrom agen_hf.engine.precision import slowest_of_processes\n"
        "from agen_hf.engine.distributed import start_process_group\n"
        "start_process_group(cpu=True, timeout=30)\n"
        "rank = int(os.environ['RANK'])\n"
        "print(f'rank {rank}: {slowest_of_processes([2.5, 1.1][rank])}', flush=True)\n"
        # as a recipe ends: every process at a barrier, then the group torn down (one left
        # alive, or torn down mid-collective, can abort the interpreter's exit: "terminate
        # called without an active exception")
        "from agen_hf.engine.distributed import wait_for_main\nwait_for_main('the end')\n"
        "import torch.distributed\ntorch.distributed.destroy_process_group()\n"
    )
    workers = spawn(
        [sys.executable, str(script)],
        {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        tmp_path / "logs",
        timeout=60,
    )
    assert [w.returncode for w in workers] == [0, 0], "\n".join(w.tail() for w in workers)
    assert "rank 0: 1.1" in workers[0].log and "rank 1: 1.1" in workers[1].log
    assert precision.slowest_of_processes(2.5) == 2.5  # one process: its own figure


FAULTS_PER_STEP = """
import resource, sys, torch
from agen_hf import AgenConfig, AgenModel
from agen_hf.engine.memory import _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD, keep_freed_memory
if sys.argv[1] == "keep":
    choice = keep_freed_memory()
else:  # glibc's starting thresholds (128 KiB), pinned: its dynamic raise after the first
    # frees would otherwise make this baseline depend on the order they came in
    import ctypes
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    choice = mallopt(_M_MMAP_THRESHOLD, 128 * 1024) and mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
torch.manual_seed(0)
model = AgenModel(AgenConfig.tiny())
x, labels = torch.randn(8, 3, 64, 64), torch.zeros(8, 20)
labels[:, 3] = 1
faults = []
for step in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x, labels).loss.backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(choice, min(faults[3:]))  # a step's own, the warm-up's first steps aside
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt",
)
def test_kept_memory_spares_the_page_faults_of_every_step():
    """A training step reallocates what the last one freed: with glibc's default thresholds
    that memory goes back to the kernel and every step page-faults it in again; kept, it is
    reused."""
    import subprocess

    faults = {}
    for mode in ("system", "keep"):
        run = subprocess.run(
            [sys.executable, "-c", FAULTS_PER_STEP, mode],
            capture_output=True,
            text=True,
            check=True,
        )
        choice, faults[mode] = run.stdout.split("\n")[-2].rsplit(" ", 1)
    assert "kept for reuse" in choice
    assert float(faults["system"]) > 100, faults  # the baseline does fault
    assert float(faults["keep"]) < float(faults["system"]) / 4, faults
