"""One training step (forward + backward of L_total, eq. 15) of the paper-size AGEN at 321^2
and of the tiny config: FLOPs (``torch.utils.flop_counter``), achieved GFLOP/s and their
ratio to a GEMM peak measured in the same run, and the cost of the full AGEN (AGM-3/4/5 +
CoAM-3/4/5) relative to the baseline (branches A + B) — Table 1's first and last rows.

    python bench/train_step.py [--batch 1] [--size 321] [--repeats 3] [--out bench_train_step.json]
    python bench/train_step.py --device cuda --batch 15 --dtypes fp32 bf16   # on a GPU

The boundary loss's CRF runs outside torch (pydensecrf) and is timed separately: the step
figures here use ``use_boundary_loss=False`` so that FLOPs and time describe the same work;
``bench/crf.py`` puts the CRF next to them.

``--quickstart`` instead breaks one whole training step of the quickstart's model
(``recipes/configs/quickstart_model.json``, batch 16, 64^2, channels-last, boundary loss on as
in the config) into parts, with ``torch.profiler`` (CPU activity) over ``--repeats`` steps
after one warm-up step, in each of ``--dtypes`` (bf16: autocast around the forward, as the
recipes run it): the joint step of the baseline and of the full AGEN, the full AGEN's
classification-phase step (eq. 11 alone), its networks alone (``network_only``: the joint
forward and backward with a trivial loss, no seeds, losses or CRF: the joint step's floor),
and the ratios full / baseline, joint / classification and network_only / classification:

    python bench/train_step.py --quickstart [--dtypes fp32 bf16] [--batch 16] [--repeats 5] \
        [--out bench_train_step_quickstart.json]

A step is forward + backward of L_total, gradient clipping (``--max_grad_norm``, the
quickstart's 10) and AdamW's step. Parts, forward and backward together (an autograd node's
time goes to the part of the forward op that made it, matched by sequence number):
convolutions (every aten convolution: stem, branches, heads, AGM convs), upsampling (every
bilinear up/downsampling, wherever it is called: seeds', CoAM's and the losses' included; the
JSON splits it by where), then by ``record_function`` scopes that this script wraps around the
call sites (no model code changes): seeds (``pseudo_labels``), CoAM (``ContextAttention``),
boundary CRF (``crf_refine``, pydensecrf), losses (the rest of ``AgenModel._add_loss``),
optimizer (clipping + AdamW + zero_grad); other: batch norm, ReLU, pooling, dropout, autograd
bookkeeping and Python overhead. ms are profiled times (the profiler adds a little); the
un-profiled median step time is reported next to them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agen_hf import (  # noqa: E402
    AgenConfig,
    AgenModel,
    modeling_agen,  # noqa: E402
)
from agen_hf import losses as agen_losses  # noqa: E402
from agen_hf.coam import ContextAttention  # noqa: E402
from agen_hf.engine.memory import keep_freed_memory  # noqa: E402

ROWS = {"baseline": ((), ()), "full": ((3, 4, 5), (3, 4, 5))}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_peak(device: str, dtype: torch.dtype, sizes: list[int], repeats: int = 5) -> float:
    """Best GFLOP/s of n x n x n matrix products over ``sizes``: the machine's practical
    peak for dense math in this dtype."""
    best_rate = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best_rate = max(best_rate, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best_rate


def make_batch(config: AgenConfig, batch: int, size: int, device: str):
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch, 3, size, size, generator=g).to(device)
    labels = torch.zeros(batch, config.num_classes)
    labels[torch.arange(batch), torch.randint(0, config.num_classes, (batch,), generator=g)] = 1
    return pixel_values, labels.to(device)


def time_step(
    model: AgenModel,
    pixel_values,
    labels,
    device: str,
    dtype: torch.dtype,
    repeats: int,
    compile: str | None = None,
) -> tuple[float, int]:
    """Median seconds of a forward + backward step, and its FLOPs (counted on the eager
    model; with ``compile``, a torch.compile backend, the compiled one is timed after a
    compiling step)."""
    autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
    run = model

    def step():
        with autocast:
            out = run(pixel_values, labels)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    if compile:
        run = torch.compile(model, backend=compile)
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], counter.get_total_flops()


def bench_config(name: str, base: AgenConfig, args, dtype: torch.dtype, peak: float) -> dict:
    result = {}
    for row, (agm, coam) in ROWS.items():
        config = AgenConfig.from_dict(
            {**base.to_dict(), "agm_stages": agm, "coam_stages": coam, "use_boundary_loss": False}
        )
        torch.manual_seed(0)
        model = AgenModel(config).to(args.device).train()
        pixel_values, labels = make_batch(config, args.batch, args.size, args.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds, flops = time_step(
            model,
            pixel_values,
            labels,
            args.device,
            dtype,
            args.repeats,
            compile=args.compile_backend if args.compile else None,
        )
        entry = {
            "step_s": seconds,
            "gflop": flops / 1e9,
            "gflop_per_s": flops / seconds / 1e9,
            "fraction_of_gemm_peak": flops / seconds / 1e9 / peak,
            "images_per_s": args.batch / seconds,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if args.device.startswith("cuda"):
            entry["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if args.ops and row == "full":
            entry["ops"] = op_breakdown(
                model, pixel_values, labels, dtype, seconds, flops, args.ops
            )
        result[row] = entry
        print(f"{name} {row}: {json.dumps(entry)}", flush=True)
        del model
    result["full_over_baseline_time"] = result["full"]["step_s"] / result["baseline"]["step_s"]
    result["full_over_baseline_flops"] = result["full"]["gflop"] / result["baseline"]["gflop"]
    return result


# Matrix products: the ops whose FLOPs FlopCounterMode counts (all of a step's FLOPs)
GEMM_OPS = ("convolution", "mm", "bmm", "addmm", "baddbmm", "scaled_dot_product", "linear")


def op_breakdown(model, pixel_values, labels, dtype, step_s: float, flops: int, top: int) -> dict:
    """One profiled CPU step (forward + backward, autocast as timed): the ``top`` aten ops by
    self time, each with its share of the step; the matrix products' share and their own
    GFLOP/s (every FLOP of the step is theirs), and what the rest costs."""
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with autocast:
            out = model(pixel_values, labels)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if any(g in e.key for g in GEMM_OPS)) / 1e6
    rows = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    result = {
        "profiled_aten_s": total,
        "matrix_products_s": gemm,
        "matrix_products_share": gemm / total,
        "matrix_products_gflop_per_s": flops / gemm / 1e9,
        "other_s": total - gemm,
        "top_ops": [
            {
                "op": e.key,
                "self_ms": e.self_cpu_time_total / 1e3,
                "share": e.self_cpu_time_total / 1e6 / total,
                "calls": e.count,
            }
            for e in rows
        ],
    }
    print(
        f"  op by op ({'bf16' if dtype != torch.float32 else 'fp32'}, one profiled step, "
        f"{total:.2f} s of aten self time against {step_s:.2f} s un-profiled): matrix products "
        f"{100 * gemm / total:.1f} % at {flops / gemm / 1e9:.0f} GFLOP/s, the rest "
        f"{total - gemm:.2f} s"
    )
    for r in result["top_ops"]:
        print(f"    {r['op']:48s} {r['self_ms']:9.1f} ms {100 * r['share']:5.1f} %  x{r['calls']}")
    return result


# -- --quickstart: where the step time goes ----------------------------------------------------

QUICKSTART_CONFIG = ROOT / "recipes" / "configs" / "quickstart_model.json"
PARTS = [
    "convolutions",
    "upsampling",
    "seeds",
    "coam",
    "boundary_crf",
    "losses",
    "optimizer",
    "other",
]
SCOPES = ("seeds", "coam", "boundary_crf", "losses")  # record_function names, = their part
PHASES = ("forward", "backward", "optimizer")  # the top-level scopes of a step
BACKWARD_PREFIX = "autograd::engine::evaluate_function: "
CONV = re.compile(r"aten::\w*(convolution|conv\d?d|conv_)|Convolution\w*Backward")
UPSAMPLE = re.compile(r"aten::_?upsample_bilinear2d|^UpsampleBilinear2D")


def _scoped(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(name):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def part_scopes():
    """Wrap the call sites of the parts that op names cannot tell apart in ``record_function``
    scopes, for the time of the block (the model's code is left as it is)."""
    patches = [
        (modeling_agen, "pseudo_labels", "seeds"),
        (agen_losses, "crf_refine", "boundary_crf"),
        (modeling_agen.AgenModel, "_add_loss", "losses"),
        (ContextAttention, "forward", "coam"),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    for owner, attr, name in patches:
        setattr(owner, attr, _scoped(name, getattr(owner, attr)))
    try:
        yield
    finally:
        for owner, attr, fn in saved:
            setattr(owner, attr, fn)


def _chain(event):
    """The event and its ancestors, innermost first."""
    while event is not None:
        yield event
        event = event.cpu_parent


def _op_part(names) -> str | None:
    for name in names:
        if CONV.search(name):
            return "convolutions"
        if UPSAMPLE.search(name):
            return "upsampling"
    return None


def attribute(events) -> dict[tuple[str, str, str], float]:
    """Self CPU microseconds of every profiled event by (part, phase, scope): op names first
    (convolutions, upsampling), then the innermost part scope; an autograd node's ops take
    the scope of the forward op that created it (same ``sequence_nr``). ``scope`` is where
    the time was spent (a part scope or ``model``)."""
    info = {}
    forward_scope = {}  # sequence_nr -> scope of the latest forward op with it
    for e in sorted(events, key=lambda e: e.time_range.start):
        chain = list(_chain(e))
        names = [c.name for c in chain]
        phase = next((n for n in reversed(names) if n in PHASES), "other")
        scope = next((n for n in names if n in SCOPES), None)
        info[id(e)] = (chain, names, phase, scope)
        if phase == "forward" and e.sequence_nr >= 0:
            forward_scope[e.sequence_nr] = scope
    totals: dict[tuple[str, str, str], float] = defaultdict(float)
    for e in events:
        chain, names, phase, scope = info[id(e)]
        if phase == "optimizer":
            part = "optimizer"
        else:
            node = next((c for c in chain if c.name.startswith(BACKWARD_PREFIX)), None)
            if node is not None:
                node_name = node.name[len(BACKWARD_PREFIX) :]
                scope = forward_scope.get(node.sequence_nr) if scope is None else scope
                part = _op_part([node_name]) or _op_part(names) or scope or "other"
            else:
                part = _op_part(names) or scope or "other"
        totals[(part, phase, scope or "model")] += e.self_cpu_time_total
    return totals


def make_optimizer(model: AgenModel) -> torch.optim.Optimizer:
    """AdamW over the recipe's parameter groups, fused as the recipes run it (the learning
    rates do not change the time)."""
    return torch.optim.AdamW(
        [{"params": ps} for ps in model.parameter_groups().values() if ps],
        lr=1e-3,
        weight_decay=5e-4,
        fused=True,
    )


def training_step(
    model,
    optimizer,
    pixel_values,
    labels,
    max_grad_norm: float,
    classification_only: bool = False,
    dtype: torch.dtype = torch.float32,
    network_only: bool = False,
) -> None:
    """One optimizer step. ``network_only``: the joint forward without labels (no seeds, no
    losses, no CRF) and the plain sum of every head's mean output as the loss: what the
    networks alone cost, the floor of the joint step."""
    with (
        record_function("forward"),
        torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32),
    ):
        out = model(
            pixel_values, None if network_only else labels, classification_only=classification_only
        )
        loss = (
            out.loss
            if not network_only
            else sum(
                t.float().mean()
                for t in [out.logits, *out.agm_logits.values(), *out.class_logits.values()]
            )
        )
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def breakdown_row(
    config: AgenConfig,
    args,
    dtype: torch.dtype,
    classification_only: bool = False,
    network_only: bool = False,
) -> dict:
    torch.manual_seed(0)
    model = AgenModel(config).train()
    pixel_values, labels = make_batch(config, args.batch, args.size, "cpu")
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(model)
    step = functools.partial(
        training_step,
        model,
        optimizer,
        pixel_values,
        labels,
        args.max_grad_norm,
        classification_only,
        dtype,
        network_only,
    )
    with part_scopes():
        step()  # warm-up
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                step()
    totals = attribute(prof.events())
    step_ms = sum(totals.values()) / 1e3 / args.repeats
    parts, detail = {}, defaultdict(dict)
    for part in PARTS:
        ms = sum(v for k, v in totals.items() if k[0] == part) / 1e3 / args.repeats
        parts[part] = {"ms": ms, "percent": 100 * ms / step_ms}
        for phase in PHASES:
            v = sum(t for k, t in totals.items() if k[0] == part and k[1] == phase)
            if v:
                parts[part][f"{phase}_ms"] = v / 1e3 / args.repeats
    for (part, _, scope), v in totals.items():
        if part in ("convolutions", "upsampling"):
            detail[part][scope] = detail[part].get(scope, 0.0) + v / 1e3 / args.repeats
    times.sort()
    return {
        "profiled_step_ms": step_ms,
        "step_ms": 1e3 * times[len(times) // 2],
        "parts": parts,
        "by_scope": dict(detail),
        "agm_stages": list(config.agm_stages),
        "coam_stages": list(config.coam_stages),
        "use_boundary_loss": config.use_boundary_loss,
        "boundary_crf": config.boundary_crf,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def print_breakdown(name: str, row: dict) -> None:
    print(
        f"\n{name}: {row['profiled_step_ms']:.1f} ms/step profiled, {row['step_ms']:.1f} ms "
        f"un-profiled (median)"
    )
    print(f"  {'part':<14}{'ms':>9}{'% of step':>11}")
    for part, v in row["parts"].items():
        print(f"  {part:<14}{v['ms']:>9.2f}{v['percent']:>10.1f}%")


def bench_quickstart(args) -> dict:
    """Per dtype: the joint step of the baseline and of the full AGEN, and the full AGEN's
    classification-phase step (eq. 11 alone, ``classification_only``: the quickstart's first
    ``seeding_warmup_steps``); the ratios full / baseline and joint / classification."""
    base = AgenConfig.from_json_file(args.model_config).to_dict()
    result = {
        "model_config": str(args.model_config),
        "optimizer": "AdamW",
        "max_grad_norm": args.max_grad_norm,
        "repeats": args.repeats,
        "channels_last": args.channels_last,
    }
    for dtype_name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        rows = {}
        for row, (agm, coam) in ROWS.items():
            config = AgenConfig.from_dict({**base, "agm_stages": agm, "coam_stages": coam})
            rows[row] = breakdown_row(config, args, dtype)
            print_breakdown(f"{row} ({dtype_name})", rows[row])
        rows["classification"] = breakdown_row(
            AgenConfig.from_dict(base), args, dtype, classification_only=True
        )
        print_breakdown(f"classification ({dtype_name})", rows["classification"])
        rows["network_only"] = breakdown_row(
            AgenConfig.from_dict(base), args, dtype, network_only=True
        )
        print_breakdown(f"network_only ({dtype_name})", rows["network_only"])
        for name, (num, den) in {
            "full_over_baseline": ("full", "baseline"),
            "joint_over_classification": ("full", "classification"),
            "network_only_over_classification": ("network_only", "classification"),
        }.items():
            rows[f"{name}_time"] = rows[num]["step_ms"] / rows[den]["step_ms"]
            rows[f"{name}_time_profiled"] = (
                rows[num]["profiled_step_ms"] / rows[den]["profiled_step_ms"]
            )
            print(
                f"{name.replace('_over_', ' / ')} step time ({dtype_name}): "
                f"{rows[f'{name}_time']:.2f} (profiled: {rows[f'{name}_time_profiled']:.2f})"
            )
        result[dtype_name] = rows
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["paper", "tiny"])
    p.add_argument(
        "--quickstart",
        action="store_true",
        help="per-part breakdown of a training step of --model_config on the CPU "
        "instead (baseline and full AGEN)",
    )
    p.add_argument(
        "--model_config",
        default=str(QUICKSTART_CONFIG),
        help="with --quickstart: the config.json to break down",
    )
    p.add_argument(
        "--max_grad_norm",
        type=float,
        default=10.0,
        help="with --quickstart: gradient clipping in the step (0: none)",
    )
    p.add_argument(
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last weights and images (default: on with --quickstart, "
        "as the quickstart trains; off for --configs)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (--configs; the first step compiles)",
    )
    p.add_argument(
        "--compile_backend",
        default="inductor",
        help="with --compile (eager: dynamo's tracing alone, a quick check)",
    )
    p.add_argument("--batch", type=int, default=None, help="default: 1, --quickstart 16")
    p.add_argument("--size", type=int, default=None, help="default: 321, --quickstart 64")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--ops",
        type=int,
        default=0,
        help="--configs on the CPU: the full AGEN's N costliest aten ops in one profiled step",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--gemm_sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument(
        "--system_malloc",
        action="store_true",
        help="leave glibc's malloc as it is (default: freed memory kept for reuse, "
        "as the recipes run on a CPU: agen_hf.engine.accelerator.keep_freed_memory)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="default: bench_train_step.json, --quickstart bench_train_step_quickstart.json",
    )
    args = p.parse_args()
    q = args.quickstart
    args.batch = args.batch or (16 if q else 1)
    args.channels_last = q if args.channels_last is None else args.channels_last
    args.size = args.size or (64 if q else 321)
    args.out = args.out or ("bench_train_step_quickstart.json" if q else "bench_train_step.json")
    if q and args.device != "cpu":
        p.error("--quickstart profiles the CPU")
    memory = None if args.system_malloc or args.device != "cpu" else keep_freed_memory()
    result = {
        "device": args.device,
        "batch": args.batch,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": (
            torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else platform.processor() or platform.machine()
        ),
        "date": time.strftime("%Y-%m-%d"),
        "cpu_memory": memory or "glibc defaults",
    }
    if q:
        for dtype_name in args.dtypes:  # the machine's speed, beside its step times
            dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
            peak = gemm_peak("cpu", dtype, args.gemm_sizes)
            result[f"gemm_peak_gflop_per_s_{dtype_name}"] = peak
            print(f"GEMM peak ({dtype_name}, best of {args.gemm_sizes}): {peak:.1f} GFLOP/s")
        result["quickstart"] = bench_quickstart(args)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"written {args.out}")
        return
    for dtype_name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        peak = gemm_peak(args.device, dtype, args.gemm_sizes)
        result[f"gemm_peak_gflop_per_s_{dtype_name}"] = peak
        print(
            f"GEMM peak ({dtype_name}, best of {args.gemm_sizes}): {peak:.1f} GFLOP/s", flush=True
        )
        for name in args.configs:
            base = AgenConfig() if name == "paper" else AgenConfig.tiny()
            result[f"{name}_{dtype_name}"] = bench_config(name, base, args, dtype, peak)
    result.update(channels_last=args.channels_last, compile=args.compile)
    if {"fp32", "bf16"} <= set(args.dtypes):
        for name in args.configs:
            for row in ROWS:
                result[f"{name}_{row}_bf16_speedup"] = (
                    result[f"{name}_fp32"][row]["step_s"] / result[f"{name}_bf16"][row]["step_s"]
                )
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()
