"""Every path that runs under N processes, run under 2 gloo processes with bad samples on any
subset of them: training's periodic and final validation, eval_voc.py, make_pseudo_labels.py
and predict.py. Each run ends (no hang: workers.py kills and fails a run past its limit),
every worker exits 3 when something was skipped, the skipped samples are named, and the
figures equal one process's on the same data. Then a stuck process: an error naming the
collective within --ddp_timeout, and the whole job ends."""

import json
import runpy
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from voc_fixtures import write_synthetic_voc
from workers import ROOT, accelerate_launch, launch, patched, spawn, torchrun

TRAIN = ROOT / "recipes" / "train_voc.py"
EVAL = ROOT / "recipes" / "eval_voc.py"
PSEUDO = ROOT / "recipes" / "make_pseudo_labels.py"
PREDICT = ROOT / "recipes" / "predict.py"

# the val split's size and its bad images by index; 2 processes score indices 0, 2 and 1, 3
LAYOUTS = {
    "bad on process 0": (4, [0]),
    "bad on process 1": (4, [1]),
    "every image of process 1 bad": (4, [1, 3]),
    "fewer images than processes": (1, []),
}
BAD_LAYOUTS = [k for k, (_, bad) in LAYOUTS.items() if bad]


def voc_root(folder: Path, layout: str) -> tuple[Path, list[str]]:
    """A VOC root (train: 4 images, val: the layout's) whose bad val JPEGs are truncated (found
    when their pixels are decoded, after indexing), and the bad ids."""
    size, bad = LAYOUTS[layout]
    root = write_synthetic_voc(folder, {"train": 4, "val": size}, image_size=48)
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    for i in bad:
        jpg = root / "JPEGImages" / f"{ids[i]}.jpg"
        data = jpg.read_bytes()
        jpg.write_bytes(data[: len(data) // 2])
    return root, [ids[i] for i in bad]


def statuses(workers) -> list[int]:
    return [w.returncode for w in workers]


def tails(workers) -> str:
    return "\n".join(w.tail() for w in workers)


def in_process(recipe: Path, args: list) -> tuple[dict | None, int]:
    """One process: the recipe's main in this interpreter, with its exit status."""
    try:
        return runpy.run_path(str(recipe))["main"]([str(a) for a in args]), 0
    except SystemExit as e:
        return None, e.code


def same_figures(a: dict, b: dict) -> None:
    """Equal, NaN (a class absent from both) included."""
    assert list(a) == list(b)
    np.testing.assert_array_equal(np.array(list(a.values())), np.array(list(b.values())))


# -- training's validation -----------------------------------------------------------------------


def one_process_validation(model_dir: Path, root: Path, cache: Path) -> dict:
    """The saved model scored by one process with training's own validation."""
    from agen_hf import AgenModel
    from agen_hf.data import load_voc
    from agen_hf.engine import make_accelerator
    from agen_hf.engine.evaluation import validate
    from agen_hf.engine.loaders import val_loader

    model = AgenModel.from_pretrained(model_dir)
    accelerator = make_accelerator(cpu=True)
    ds = load_voc(root, "val", require_foreground=False, cache_dir=cache)
    loader = val_loader(
        accelerator,
        ds,
        batch_size=1,
        image_mean=model.config.image_mean,
        image_std=model.config.image_std,
        skip_bad_samples=True,
    )
    return validate(accelerator, model, loader, 0, 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_validation_under_two_processes(layout, tmp_path, env):
    """The hang this guards against: a bad val image on one process stopped the final
    validation forever (a DDP forward's buffer broadcast on one process met the
    confusion-matrix sum on the other). Two epochs: the periodic validation after the first
    and the final one."""
    root, bad = voc_root(tmp_path / "voc", layout)
    out = tmp_path / "run"
    args = [
        "--voc_root", root, "--train_split", "train", "--eval_split", "val",
        "--model_config", "tiny", "--max_train_steps", "2",
        "--per_device_train_batch_size", "2", "--crop_size", "48", "--scale_range", "48", "56",
        "--num_workers", "0", "--boundary_crf", "torch", "--skip_bad_samples",
        "--ddp_timeout", "30", "--output_dir", out,
    ]  # fmt: skip
    workers = spawn([sys.executable, str(TRAIN), *map(str, args)], env, tmp_path / "logs")
    assert statuses(workers) == [3 if bad else 0] * 2, tails(workers)
    assert workers[0].log.count("val mIoU") == 3  # epoch 1, the final one, the summary line
    result = json.loads((out / "eval_results.json").read_text())
    assert sorted(result.get("val_skipped_samples", {})) == bad
    assert result.get("bad_samples_skipped", 0) == len(bad)
    for sample_id in bad:
        assert (
            f"{sample_id}.jpg: truncated or corrupt image"
            in result["val_skipped_samples"][sample_id]
        )
        assert sample_id in workers[0].log  # the main process names every one
    if bad:
        assert "finished with problems (exit 3): 1 bad samples" in workers[0].log or (
            f"{len(bad)} bad samples were skipped" in workers[0].log
        )
    # every process scored with the weights and batch-norm statistics the main process saved
    one = one_process_validation(out, root, tmp_path / "cache")
    same_figures(
        result["val_per_category_iou"],
        dict(zip(result["val_per_category_iou"], one["per_category_iou"].tolist())),
    )
    assert sorted(one["skipped_samples"]) == bad


OWN_STATISTICS = """
import json, sys, torch
from agen_hf import AgenConfig, AgenModel
from agen_hf.data import make_synthetic
from agen_hf.engine import make_accelerator
from agen_hf.engine.distributed import wait_for_main
from agen_hf.engine.evaluation import validate
from agen_hf.engine.loaders import val_loader

accelerator = make_accelerator(cpu=True, ddp_timeout=30)
torch.manual_seed(0)
model = AgenModel(AgenConfig.tiny().with_classes({0: "background", 1: "a", 2: "b", 3: "c"}))
model = accelerator.prepare(model)  # DDP: the same weights and buffers everywhere
rank = accelerator.process_index
for m in model.module.modules():  # then each process's own statistics, as after a step
    if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.add_(0.5 * rank)
        m.running_var.mul_(1 + 3 * rank)
ds = make_synthetic(6, seed=int(sys.argv[1]), image_size=48, cache_dir=sys.argv[2])
config = model.module.config
loader = val_loader(
    accelerator, ds, batch_size=1, image_mean=config.image_mean, image_std=config.image_std
)
metrics = validate(accelerator, model, loader, 0, 0)
print("figures", json.dumps(metrics["per_category_iou"].tolist()), flush=True)
wait_for_main("the end")  # as every recipe ends: a group torn down mid-collective can abort
accelerator.end_training()
"""


def test_validation_scores_every_process_with_the_main_processs_statistics(tmp_path, env):
    """Each process's batch-norm statistics moved with its own batches; the validation's
    figures are those of the main process's model (the one it saves), scored by one process."""
    script = tmp_path / "own.py"
    script.write_text(OWN_STATISTICS)
    args = [sys.executable, str(script), "3", str(tmp_path / "cache")]
    two = spawn(args, env, tmp_path / "two")
    one = spawn(args, env, tmp_path / "one", processes=1)
    assert statuses(two) == [0, 0] and statuses(one) == [0], tails(two + one)
    figures = [json.loads(w.log.split("figures ")[1].splitlines()[0]) for w in (*one, two[0])]
    np.testing.assert_array_equal(*figures)


# -- the inference recipes -----------------------------------------------------------------------


def one_and_two_processes(recipe: Path, args: list, output, expected: int, tmp_path, env):
    """``recipe`` on one process (in this interpreter, ``--cpu``) and on two (spawned), writing
    where ``output("one")`` / ``output("two")`` (flags) say; each exit status must be
    ``expected``. Returns the two workers."""
    (_, status) = in_process(recipe, [*args, "--cpu", *output("one")])
    assert status == expected
    workers = spawn(
        [sys.executable, str(recipe), *map(str, [*args, *output("two")])], env, tmp_path / "logs"
    )
    assert statuses(workers) == [expected] * 2, tails(workers)
    return workers


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eval_voc_under_two_processes(layout, model_dir, tmp_path, env):
    root, bad = voc_root(tmp_path / "voc", layout)
    args = ["--model", model_dir, "--voc_root", root, "--split", "val", "--num_workers", "0"]
    args += ["--skip_bad_samples", "--ddp_timeout", "30"]
    output = lambda n: ["--output", tmp_path / f"{n}.json"]
    workers = one_and_two_processes(EVAL, args, output, 3 if bad else 0, tmp_path, env)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    same_figures(one["per_category_iou"], two["per_category_iou"])
    assert (
        one["skipped_samples"] == two["skipped_samples"] and sorted(two["skipped_samples"]) == bad
    )
    assert two["skipped"] == len(bad)
    for sample_id in bad:
        assert sample_id in workers[0].log


@pytest.mark.parametrize("layout", BAD_LAYOUTS)
def test_make_pseudo_labels_under_two_processes(layout, model_dir, tmp_path, env):
    root, bad = voc_root(tmp_path / "voc", layout)
    args = ["--model", model_dir, "--voc_root", root, "--split", "val", "--num_workers", "0"]
    args += ["--skip_bad_samples", "--ddp_timeout", "30"]
    one_and_two_processes(PSEUDO, args, lambda n: ["--out", tmp_path / n], 3, tmp_path, env)
    one, two = (
        json.loads((tmp_path / n / "pseudo_labels_report.json").read_text()) for n in ("one", "two")
    )
    assert sorted(two["skipped"]) == bad and one["skipped"] == two["skipped"]
    assert one["mean_iou"] == two["mean_iou"] and one["images"] == two["images"] == 4 - len(bad)
    written = sorted(p.name for p in (tmp_path / "two" / "SegmentationClassAug").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "one" / "SegmentationClassAug").iterdir())
    assert len(written) == 4 - len(bad)
    for name in written:
        a, b = (
            np.array(Image.open(tmp_path / n / "SegmentationClassAug" / name))
            for n in ("one", "two")
        )
        np.testing.assert_array_equal(a, b)
    listed = (tmp_path / "two" / "ImageSets/Segmentation/val.txt").read_text().split()
    assert not set(listed) & set(bad)


@pytest.mark.parametrize("layout", BAD_LAYOUTS)
def test_predict_under_two_processes(layout, model_dir, tmp_path, env):
    root, bad = voc_root(tmp_path / "voc", layout)
    ids = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    args = ["--model", model_dir, "--images", *images, "--num_workers", "0", "--voc_layout"]
    args += ["--ddp_timeout", "30"]
    one_and_two_processes(PREDICT, args, lambda n: ["--out", tmp_path / n], 3, tmp_path, env)
    one, two = (
        json.loads((tmp_path / n / "predict_report.json").read_text()) for n in ("one", "two")
    )
    assert sorted(Path(p).stem for p in two["failed"]) == bad and one["failed"] == two["failed"]
    assert one["written"] == two["written"] == 4 - len(bad)
    for sample_id in ids:
        files = [tmp_path / n / "masks" / f"{sample_id}.png" for n in ("one", "two")]
        assert files[1].is_file() == (sample_id not in bad)
        if sample_id not in bad:
            np.testing.assert_array_equal(*(np.array(Image.open(f)) for f in files))


# -- stuck or failed processes -------------------------------------------------------------------

STUCK_BEFORE_FINAL_VALIDATION = """
import os, time
import agen_hf.engine.run as run
validate = run.validate
def stuck(*args, **kwargs):
    if os.environ["RANK"] == "1":
        time.sleep(600)
    return validate(*args, **kwargs)
run.validate = stuck
"""


@pytest.mark.parametrize("launcher", [accelerate_launch, torchrun])
def test_a_stuck_process_is_an_error_naming_the_collective_and_the_job_ends(
    launcher, tmp_path, env
):
    """Process 1 never reaches the final validation: process 0 stops after --ddp_timeout with
    an error naming what it waited in, and the launcher ends process 1 (exit 1 overall)."""
    root, _ = voc_root(tmp_path / "voc", "bad on process 0")
    args = [
        "--voc_root", root, "--train_split", "train", "--eval_split", "val",
        "--model_config", "tiny", "--max_train_steps", "1",
        "--per_device_train_batch_size", "2", "--crop_size", "48", "--scale_range", "48", "56",
        "--num_workers", "0", "--boundary_crf", "torch", "--ddp_timeout", "3",
        "--output_dir", tmp_path / "run",
    ]  # fmt: skip
    script = tmp_path / "worker.py"
    script.write_text(patched(TRAIN, args, STUCK_BEFORE_FINAL_VALIDATION)[-1])
    started = time.monotonic()
    job = launch(launcher([str(script)]), env, tmp_path / "logs", timeout=120)
    assert job.returncode == 1, job.tail(60)
    assert (
        "the validation's batch-norm statistics from the main process: the processes did not "
        "all take part within --ddp_timeout 3 s" in job.log
    ), job.tail(60)
    assert time.monotonic() - started < 60  # not the sleep's 600 s


PROCESS_GROUP_SCRIPT = """
import os, sys, time
import torch
from agen_hf.engine.accelerator import make_accelerator
from agen_hf.engine.precision import slowest_of_processes
from agen_hf.engine.distributed import barrier, main_process_first, sum_over_processes
from agen_hf.engine.distributed import wait_for_main

mode = sys.argv[1]
accelerator = make_accelerator(cpu=True, ddp_timeout=2)
rank = accelerator.process_index
if mode == "probe":  # the bf16 probe's agreement, in the group make_accelerator started
    if rank == 1:
        time.sleep(4)
    slowest_of_processes(1.0)
elif mode == "patient":  # one process's own work, longer than --ddp_timeout
    with main_process_first(accelerator, "indexing"):
        if rank == 0:
            time.sleep(3)
    if rank == 0:
        time.sleep(3)
    wait_for_main("the final save")
elif mode == "bounded":
    if rank == 0:
        time.sleep(4)
    barrier("a barrier between equals")
total = sum_over_processes(accelerator, torch.ones(1), "the sum")
print(f"process {rank}: done, {total.item():g}", flush=True)
wait_for_main("the end")
accelerator.end_training()
"""


@pytest.mark.parametrize("mode", ["probe", "patient", "bounded"])
def test_the_timeout_bounds_collectives_and_never_one_processs_own_work(mode, tmp_path, env):
    script = tmp_path / "group.py"
    script.write_text(PROCESS_GROUP_SCRIPT)
    started = time.monotonic()
    workers = spawn([sys.executable, str(script), mode], env, tmp_path / "logs", timeout=60)
    if mode == "patient":
        assert statuses(workers) == [0, 0], tails(workers)
        assert all("done, 2" in w.log for w in workers)
        return
    assert statuses(workers) == [1, 1], tails(workers)
    stuck_for = {"probe": "the bf16 probe's agreement", "bounded": "a barrier between equals"}
    waiting = workers[0 if mode == "probe" else 1]
    assert f"{stuck_for[mode]}" in waiting.log and "--ddp_timeout 2 s" in waiting.log, tails(
        workers
    )
    assert time.monotonic() - started < 30


def test_the_collective_error_names_what_and_lets_other_errors_through(monkeypatch):
    from agen_hf.engine import distributed
    from agen_hf.engine.distributed import CollectiveError, collective

    monkeypatch.setattr(distributed, "_active", lambda: True)
    gloo = "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 2000ms for recv operation"
    with pytest.raises(CollectiveError, match="the x sum: .* --ddp_timeout 1800 s.*Timed out"):
        with collective("the x sum"):
            raise RuntimeError(gloo)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as e:
        with collective("the y step"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    assert type(e.value) is RuntimeError
    monkeypatch.setattr(distributed, "_active", lambda: False)  # one process: as raised
    with pytest.raises(RuntimeError, match="Timed out") as e:
        with collective("the x sum"):
            raise RuntimeError(gloo)
    assert type(e.value) is RuntimeError


def test_the_timeout_is_not_part_of_the_run(tmp_path, env):
    """--ddp_timeout is how long to wait, not what is trained: a resume may change it."""
    out = tmp_path / "run"
    common = [
        sys.executable, str(TRAIN), "--dataset", "synthetic", "--model_config", "tiny",
        "--synthetic_size", "4", "--synthetic_val_size", "2", "--synthetic_image_size", "32",
        "--per_device_train_batch_size", "2", "--max_train_steps", "2", "--num_workers", "0",
        "--boundary_crf", "torch", "--output_dir", str(out),
    ]  # fmt: skip
    first = launch([*common, "--ddp_timeout", "100"], env, tmp_path / "a")
    assert first.returncode == 0, first.tail()
    again = launch(
        [*common, "--ddp_timeout", "7", "--resume_from_checkpoint", "auto"], env, tmp_path / "b"
    )
    assert again.returncode == 0 and "resumed from" in again.log, again.tail()
    settings = (out / "training_args.yaml").read_text()
    assert "ddp_timeout: 7" in settings


PREEMPT_PROCESS_1 = """
import os, signal
import agen_hf.engine.loop as loop
log_step = loop.log_step
def log_then_preempt(accelerator, state, *args, **kwargs):
    record = log_step(accelerator, state, *args, **kwargs)
    if os.environ["RANK"] == "1" and state.global_step == 3:  # SLURM signals one task early
        os.kill(os.getpid(), signal.SIGUSR1)
    return record
loop.log_step = log_then_preempt
"""


def test_a_preemption_signal_on_one_process_stops_every_process_with_75(tmp_path, env):
    out = tmp_path / "run"
    args = [
        "--dataset", "synthetic", "--model_config", "tiny", "--synthetic_size", "8",
        "--synthetic_val_size", "2", "--synthetic_image_size", "32",
        "--per_device_train_batch_size", "2", "--max_train_steps", "6", "--num_workers", "0",
        "--boundary_crf", "torch", "--ddp_timeout", "30", "--resume_from_checkpoint", "auto",
        "--output_dir", out,
    ]  # fmt: skip
    workers = spawn(patched(TRAIN, args, PREEMPT_PROCESS_1), env, tmp_path / "a")
    assert statuses(workers) == [75, 75], tails(workers)
    assert (out / "checkpoint-4").is_dir() and not (out / "model.safetensors").exists()
    workers = spawn([sys.executable, str(TRAIN), *map(str, args)], env, tmp_path / "b")
    assert statuses(workers) == [0, 0], tails(workers)
    assert "resumed from" in workers[0].log
    assert [json.loads(line)["step"] for line in (out / "train_log.jsonl").open()] == [
        1, 2, 3, 4, 5, 6
    ]  # fmt: skip


def test_sync_bn_on_cpu_processes_is_an_error_at_start(tmp_path, env):
    """DDP refuses SyncBatchNorm on the CPU once it wraps the model; the recipe says so, naming
    the flag, before it indexes the data or writes the run folder."""
    out = tmp_path / "run"
    args = ["--synthetic_size", "8", "--max_train_steps", "2", "--sync_bn", "--output_dir", out]
    workers = spawn([sys.executable, str(TRAIN), *map(str, args)], env, tmp_path / "logs")
    assert statuses(workers) == [1, 1], tails(workers)
    for worker in workers:
        assert "--sync_bn: SyncBatchNorm pools batch statistics across GPUs only" in worker.log
        assert "only work with GPU modules" not in worker.log  # not DDP's own, later error
    assert not out.exists()


# -- predict.py --skip_existing ------------------------------------------------------------------


def test_skip_existing_redoes_an_image_with_any_output_missing(model_dir, tmp_path):
    root, _ = voc_root(tmp_path / "voc", "bad on process 1")
    images = sorted((root / "JPEGImages").glob("val_*.jpg"))[::2]  # the two good ones
    out = tmp_path / "out"
    args = ["--model", model_dir, "--images", *images, "--num_workers", "0", "--voc_layout"]
    args += ["--cpu", "--out", out]
    report, status = in_process(PREDICT, args)
    assert status == 0 and report["written"] == 2
    a, b = (p.stem for p in images)
    server = out / "results/VOC2012/Segmentation/comp6_test_cls"
    (out / "overlays" / f"{a}.jpg").unlink()  # killed after the mask and the copy
    (server / f"{b}.png").unlink()  # killed after the mask
    report, status = in_process(PREDICT, [*args, "--skip_existing"])
    assert status == 0 and report["written"] == 2
    assert (out / "overlays" / f"{a}.jpg").is_file() and (server / f"{b}.png").is_file()
    report, status = in_process(PREDICT, [*args, "--skip_existing"])
    assert report["written"] == 0
    # without the overlays asked for, a missing overlay is no reason to redo an image
    (out / "overlays" / f"{a}.jpg").unlink()
    report, status = in_process(PREDICT, [*args, "--skip_existing", "--no_overlays"])
    assert report["written"] == 0


RECORD_WRITES = """
import os, time
import agen_hf.atomic as atomic
import agen_hf.engine.logs as logs
save = atomic.save_image_atomic
def recorded(image, path, **kwargs):
    with open(os.environ["WRITES"] + os.environ["RANK"], "a") as f:
        f.write(str(path) + "\\n")
    return save(image, path, **kwargs)
atomic.save_image_atomic = recorded
configure = logs.configure_logging
def late():  # process 1 looks at the folder long after process 0 started writing
    configure()
    if os.environ["RANK"] == "1":
        time.sleep(3)
logs.configure_logging = late
"""


def test_skip_existing_decides_once_for_every_process(model_dir, tmp_path, env):
    root = write_synthetic_voc(tmp_path / "voc", {"val": 8}, image_size=48)
    images = sorted((root / "JPEGImages").glob("*.jpg"))
    out = tmp_path / "out"
    args = ["--model", model_dir, "--images", *images[:2], "--num_workers", "0"]
    in_process(PREDICT, [*args, "--cpu", "--out", out])  # two done by an earlier run
    args = ["--model", model_dir, "--images", *images, "--num_workers", "0", "--skip_existing"]
    workers = spawn(
        patched(PREDICT, [*args, "--out", out], RECORD_WRITES),
        {**env, "WRITES": str(tmp_path / "writes-")},
        tmp_path / "logs",
    )
    assert statuses(workers) == [0, 0], tails(workers)
    masks = [
        line
        for rank in (0, 1)
        if (tmp_path / f"writes-{rank}").is_file()
        for line in (tmp_path / f"writes-{rank}").read_text().split()
        if "/masks/" in line
    ]
    assert sorted(Path(m).stem for m in masks) == sorted(p.stem for p in images[2:])
    assert json.loads((out / "predict_report.json").read_text())["written"] == 6
