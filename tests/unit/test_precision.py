"""--mixed_precision auto: bf16 only where it pays (AMX, a bf16 GPU), fp32 elsewhere
(:mod:`agen_hf.engine.precision`); the Accelerator logs it, and that freed CPU memory is kept."""

import logging

import pytest
import torch

from agen_hf.engine import accelerator as acc
from agen_hf.engine import precision


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
    monkeypatch.setattr(precision, "bf16_gemm_speedup", lambda: measured.append(1) or speedup)
    chosen, note = precision.resolve_mixed_precision("auto", on_cpu=True)
    assert (
        chosen == expected[0] and expected[1] in note and note.startswith("--mixed_precision auto:")
    )
    assert len(measured) == (speedup is not None)  # measured only where flags cannot tell


def test_the_bf16_speedup_is_measured():
    assert 0.01 < precision.bf16_gemm_speedup(n=128, repeats=1) < 100


def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision.resolve_mixed_precision("auto", on_cpu=False)[0] == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision.resolve_mixed_precision("auto", on_cpu=False) == (
        "bf16",
        "--mixed_precision auto: bf16 autocast (GPU with bf16)",
    )


@pytest.mark.parametrize("value", [None, "no", "fp16", "bf16"])
def test_explicit_values_pass_through(value):
    assert precision.resolve_mixed_precision(value, on_cpu=True) == (value, None)


def test_the_accelerator_logs_its_choice(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    with caplog.at_level(logging.INFO, logger="agen_hf.train"):
        accelerator = acc.make_accelerator(cpu=True, mixed_precision="auto")
    assert accelerator.mixed_precision == "no"
    assert "--mixed_precision auto: fp32 (this CPU has no native bf16)" in caplog.text


def test_a_cpu_accelerator_keeps_freed_memory_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(acc, "keep_freed_memory", lambda: "kept, the log says")
    with caplog.at_level(logging.INFO, logger="agen_hf.train"):
        acc.make_accelerator(cpu=True, mixed_precision="no")
    assert "kept, the log says" in caplog.text
