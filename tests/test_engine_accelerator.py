"""--mixed_precision auto: bf16 only where it pays (AMX, a bf16 GPU), fp32 elsewhere; freed CPU
memory kept for reuse."""

import platform
import sys

import pytest
import torch

from agen_hf.engine import accelerator as acc


@pytest.mark.parametrize(
    "units, speedup, expected",
    [
        (
            {"_is_amx_tile_supported": True, "_is_avx512_bf16_supported": True},
            None,
            ("bf16", "AMX"),
        ),
        # AVX512-BF16 without AMX: measured; 0.49x on one machine (fp32), 2.3x on another (bf16)
        (
            {"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": True},
            0.49,
            ("no", "AVX512-BF16 but no AMX, and bf16 matrix products measured 0.49x"),
        ),
        (
            {"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": True},
            2.3,
            ("bf16", "AVX512-BF16, no AMX: bf16 matrix products measured 2.30x"),
        ),
        (
            {"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": False},
            None,
            ("no", "no native"),
        ),
    ],
)
def test_auto_picks_bf16_only_where_it_pays(monkeypatch, units, speedup, expected):
    for name, value in units.items():
        monkeypatch.setattr(torch.cpu, name, lambda value=value: value, raising=False)
    measured = []
    monkeypatch.setattr(acc, "bf16_gemm_speedup", lambda: measured.append(1) or speedup)
    precision, note = acc.resolve_mixed_precision("auto", on_cpu=True)
    assert (
        precision == expected[0]
        and expected[1] in note
        and note.startswith("--mixed_precision auto:")
    )
    assert len(measured) == (speedup is not None)  # measured only where flags cannot tell


def test_the_bf16_speedup_is_measured():
    assert 0.01 < acc.bf16_gemm_speedup(n=128, repeats=1) < 100


def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert acc.resolve_mixed_precision("auto", on_cpu=False)[0] == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert acc.resolve_mixed_precision("auto", on_cpu=False) == (
        "bf16",
        "--mixed_precision auto: bf16 autocast (GPU with bf16)",
    )


@pytest.mark.parametrize("value", [None, "no", "fp16", "bf16"])
def test_explicit_values_pass_through(value):
    assert acc.resolve_mixed_precision(value, on_cpu=True) == (value, None)


def test_the_accelerator_carries_the_choice(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    accelerator = acc.make_accelerator(cpu=True, mixed_precision="auto")
    assert accelerator.mixed_precision == "no" and "fp32" in accelerator.precision_choice


def test_processes_that_measure_take_one_decision(tmp_path):
    """Under a 2-process CPU launch each process measures bf16; the slowest figure decides
    for all, so no two processes train in different precisions."""
    import os
    import sys

    from workers import ROOT, spawn

    script = tmp_path / "agree.py"
    script.write_text(
        "import os\nfrom agen_hf.engine.accelerator import slowest_of_processes\n"
        "from agen_hf.engine.distributed import start_process_group\n"
        "start_process_group(cpu=True, timeout=30)\n"
        "rank = int(os.environ['RANK'])\n"
        "print(f'rank {rank}: {slowest_of_processes([2.5, 1.1][rank])}', flush=True)\n"
        # as a recipe ends (accelerator.end_training): a process group left alive can abort
        # the interpreter's exit ("terminate called without an active exception")
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
    assert acc.slowest_of_processes(2.5) == 2.5  # one process: its own figure


FAULTS_PER_STEP = """
import resource, sys, torch
from agen_hf import AgenConfig, AgenModel
from agen_hf.engine.accelerator import keep_freed_memory
choice = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
model = AgenModel(AgenConfig.tiny())
x, labels = torch.randn(8, 3, 64, 64), torch.zeros(8, 20)
labels[:, 3] = 1
for step in range(8):
    if step == 3:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x, labels).loss.backward()
print(choice, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt",
)
def test_kept_memory_spares_the_page_faults_of_every_step():
    """A training step reallocates what the last one freed: with glibc's defaults that memory
    went back to the kernel and every step page-faults it in again; kept, it is reused."""
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
    assert float(faults["keep"]) < float(faults["system"]) / 4, faults


def test_a_cpu_accelerator_keeps_freed_memory(monkeypatch):
    monkeypatch.setattr(acc, "keep_freed_memory", lambda: "kept")
    assert acc.make_accelerator(cpu=True, mixed_precision="no").memory_choice == "kept"
