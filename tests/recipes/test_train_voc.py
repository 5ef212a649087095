"""The training recipe, run as a user runs it (subprocesses), on the tiny config and a few
synthetic images."""

import json
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from training_runs import RECIPE, ROOT, base_args, log, run
from workers import accelerate_launch, launch

from agen_hf.arguments import flag_values


def test_a_few_steps_lower_the_loss_and_save_a_loadable_model(tmp_path, env):
    out = tmp_path / "run"
    proc = run(base_args(out, steps=24, extra=["--synthetic_size", "8", "--cam_figure", "2"]), env)
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
    # the card's command is the one that ran (here a plain interpreter, no launcher), and every
    # setting is beside it and in the folder, the form --config takes back
    assert "python recipes/train_voc.py --dataset synthetic" in card
    settings = (out / "training_args.yaml").read_text()
    assert settings in card and "max_train_steps: 24\n" in settings
    from huggingface_hub import ModelCard

    (entry,) = ModelCard.load(out / "README.md").data.eval_results
    assert (entry.dataset_type, entry.dataset_split, entry.metric_type) == (
        "synthetic",
        "val",
        "mean_iou",
    )
    assert entry.metric_value == round(results["val_mean_iou"], 4)
    assert f'from_pretrained("{out}")' in card
    record = log(out)[-1]
    assert {"cls_A", "cls_agm3", "seg_B", "seg_agm5", "boundary", "lr", "coam3_lambda"} <= set(
        record
    )
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
        def save_then_die(accelerator, output_dir, step, state, keep_last=None, **kw):
            path = _save(accelerator, output_dir, step, state, keep_last, **kw)
            if step == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return path
        engine.save_checkpoint = save_then_die
    """
    proc = run(args(resumed), env, patch=kill_after_first_checkpoint, check=False)
    assert proc.returncode == -9
    assert [p.name for p in resumed.iterdir() if p.name.startswith("checkpoint")] == [
        "checkpoint-3"
    ]
    run(args(resumed) + ["--resume_from_checkpoint", "latest"], env)
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in log(straight)][3:] == [r["loss"] for r in log(resumed)][3:]


def test_rerun_after_the_final_checkpoint_trains_no_extra_step(tmp_path, env):
    """A job killed in its final evaluation and rerun with --resume_from_checkpoint
    latest ends with exactly the unbroken run's weights, without an extra step; a rerun of a
    finished run resumes from its final checkpoint and trains nothing either."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = lambda out: base_args(
        out, steps=7, extra=["--checkpointing_steps", "3", "--eval_every_epochs", "0"]
    )
    run(args(straight), env)
    assert (straight / "checkpoint-7").is_dir()  # the last step is checkpointed too
    die_in_final_evaluation = """
        import os, signal, agen_hf.engine.evaluation as evaluation
        def evaluate_then_die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        evaluation.evaluate_segmentation = evaluate_then_die
    """
    assert run(args(killed), env, patch=die_in_final_evaluation, check=False).returncode == -9
    assert not (killed / "model.safetensors").exists() and (killed / "checkpoint-7").is_dir()
    proc = run(args(killed) + ["--resume_from_checkpoint", "latest"], env)
    assert "after 7 steps" in proc.stdout
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert {int(v) for k, v in b.items() if k.endswith("num_batches_tracked")} == {7}
    assert [r["step"] for r in log(killed)] == list(range(1, 8))
    before = (straight / "model.safetensors").read_bytes()
    proc = run(args(straight) + ["--resume_from_checkpoint", "latest"], env)
    assert "after 7 steps" in proc.stdout and "checkpoint-7" in proc.stderr
    assert (straight / "model.safetensors").read_bytes() == before
    assert len(log(straight)) == 7


def test_every_checkpoint_is_a_loadable_model_folder(tmp_path, env):
    """Checkpoint-<step> has config.json and preprocessor_config.json beside the
    weights, so from_pretrained (and eval_voc.py --model) load it."""
    from agen_hf import AgenImageProcessor, AgenModel

    out = tmp_path / "run"
    run(
        base_args(
            out, steps=6, extra=["--checkpointing_steps", "3", "--checkpoints_total_limit", "5"]
        ),
        env,
    )
    final = AgenModel.from_pretrained(out)
    for step in (3, 6):
        folder = out / f"checkpoint-{step}"
        assert {"config.json", "preprocessor_config.json", "model.safetensors"} <= {
            p.name for p in folder.iterdir()
        }
        model = AgenModel.from_pretrained(folder)
        assert model.config == final.config
        assert AgenImageProcessor.from_pretrained(folder).image_mean == tuple(
            final.config.image_mean
        )
    weights = AgenModel.from_pretrained(out / "checkpoint-6").state_dict()
    assert all(torch.equal(v, final.state_dict()[k]) for k, v in weights.items())
    assert not all(
        torch.equal(v, final.state_dict()[k])
        for k, v in AgenModel.from_pretrained(out / "checkpoint-3").state_dict().items()
    )


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
    proc = run(
        base_args(out, steps=6, extra=["--max_nonfinite_steps", "3"]),
        env,
        patch="BAD = set(range(100))\n" + textwrap.dedent(nan_at),
        check=False,
    )
    assert proc.returncode != 0 and "3 non-finite losses in a row" in proc.stderr


def test_two_gloo_processes_match_one_process(tmp_path, env):
    config = tmp_path / "tiny_frozen.json"
    from agen_hf import AgenConfig

    # no dropout, no batch statistics: per-sample computations, as equality needs (on GPUs,
    # --sync_bn would do for batch norm)
    AgenConfig.tiny(
        resnet_dropout=(0.0, 0.0), freeze_batch_norm=True, vgg_batch_norm=False
    ).to_json_file(config)
    common = ["--model_config", str(config), "--max_train_steps", "4"]
    one, two = tmp_path / "one", tmp_path / "two"
    run(base_args(one, batch=8) + common, env)
    job = launch(
        accelerate_launch([str(RECIPE), *base_args(two, batch=4), *common, "--ddp_timeout", "60"]),
        env,
        tmp_path / "logs",
    )
    assert job.returncode == 0, job.tail(60)
    l1, l2 = log(one), log(two)
    assert len(l1) == len(l2) == 4
    for r1, r2 in zip(l1, l2):
        for key in ("loss", "cls_A", "seg_B", "seg_agm3", "boundary"):
            assert abs(r1[key] - r2[key]) < 1e-5, (r1["step"], key, r1[key], r2[key])


def test_full_supervision_tracking_and_a_failed_push(tmp_path, env):
    pytest.importorskip("tensorboard")
    out = tmp_path / "full"
    flag_token, env_token = "hf_" + "Fl4gT0ken" * 4, "env-only-secret-9271"
    proc = run(
        base_args(
            out,
            steps=5,
            extra=[
                "--full_supervision",
                "--preset",
                "baseline",
                "--with_tracking",
                "--logging_steps",
                "1",
                "--push_to_hub",
                "--hub_model_id",
                "someone/agen-test",
                "--hub_token",
                flag_token,
                "--hub_model_id=someone/agen-test",
            ],
        ),
        {**env, "HF_TOKEN": env_token},
        check=False,
    )
    # offline the push fails: the run says so and exits 3, with everything kept
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "finished with problems (exit 3): the push to someone/agen-test failed" in proc.stdout
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
    cfg.write_text(
        "preset: sc\nlearning_rate: 0.002\noptimizer: adamw\nlr_scheduler: cosine\n"
        "warmup_steps: 2\nseeding_warmup_steps: 1\n"
    )
    out = tmp_path / "cfg"
    run(
        base_args(out, steps=2)
        + ["--config", str(cfg), "--eval_every_epochs", "0", "--checkpointing_steps", "2"],
        env,
    )
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


@pytest.fixture
def recipe():
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        import train_voc

        yield train_voc
    finally:
        sys.path.remove(str(ROOT / "recipes"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("optimizer: SGD\n", "optimizer: invalid choice: 'SGD'"),
        ("report_to: tensorbord\n", "report_to: invalid choice: 'tensorbord'"),
        ("mixed_precision: bf\n", "mixed_precision: invalid choice: 'bf'"),
        ("learning_rate: fast\n", "learning_rate: invalid float value: 'fast'"),
        ("max_train_steps: 1.5\n", "max_train_steps: invalid int value: '1.5'"),
        ("scale_range: [64]\n", "scale_range: expected 2 arguments"),
        ("deterministic: 'yes'\n", "deterministic: expected true or false, got 'yes'"),
        ("- optimizer\n", "expected a mapping"),
    ],
)
def test_a_config_file_is_checked_like_the_command_line(recipe, tmp_path, capsys, text, message):
    """Same choices, types and value counts as the flags; the error names the
    file and the key."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as e:
        recipe.parse_args(["--config", str(cfg)])
    assert e.value.code == 2
    assert f"--config {cfg}: {message}" in capsys.readouterr().err


def test_run_settings_read_back_as_a_config_file_give_the_same_run(recipe, tmp_path):
    """The model card's settings (``training_args.yaml``): every flag of the run as it was
    merged from its config file and command line; ``--config`` that file parses to the same."""
    import yaml

    from agen_hf.engine.redaction import run_settings

    cfg = tmp_path / "run.yaml"
    cfg.write_text("optimizer: adamw\nscale_range: [64, 96]\nlearning_rate: 0.003\n")
    argv = ["--config", str(cfg), "--seed", "5", "--deterministic", "--agm_stages", "4"]
    args = flag_values(*recipe.parse_args(argv))
    saved = tmp_path / "training_args.yaml"
    saved.write_text(yaml.safe_dump(run_settings(args)))
    again = flag_values(*recipe.parse_args(["--config", str(saved)]))
    assert again == args


def test_config_file_values_are_typed_and_the_command_line_wins(recipe, tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(
        json.dumps(
            {
                "optimizer": "adamw",
                "learning_rate": 1,
                "scale_range": [64, 96],
                "deterministic": True,
                "max_train_steps": None,
            }
        )
    )
    args = recipe.parse_args(["--config", str(cfg)]).training
    assert (args.optimizer, args.learning_rate, args.scale_range, args.deterministic) == (
        "adamw",
        1.0,
        [64, 96],
        True,
    )
    assert isinstance(args.learning_rate, float) and args.max_train_steps is None
    args = recipe.parse_args(
        ["--config", str(cfg), "--optimizer", "sgd", "--scale_range", "8", "9"]
    ).training
    assert args.optimizer == "sgd" and args.scale_range == [8, 9]
    with pytest.raises(SystemExit):
        recipe.parse_args(["--config", str(tmp_path / "missing.yaml")])
    assert f"--config {tmp_path / 'missing.yaml'}: cannot read it" in capsys.readouterr().err


def test_tracking_without_a_tracker_fails_at_start_saying_what_to_install(monkeypatch):
    """--with_tracking after the plain install names the package; --report_to
    goes to Accelerate as given (all: every installed tracker)."""
    import agen_hf.engine.arguments as arguments

    def check(report_to):
        arguments.TrainingArguments(with_tracking=True, report_to=report_to).check_trackers()

    monkeypatch.setattr(arguments, "get_available_trackers", lambda: [])
    with pytest.raises(SystemExit, match=r"tensorboard is not installed; pip install tensorboard"):
        check("tensorboard")
    with pytest.raises(SystemExit, match="no tracker is installed"):
        check("all")
    with pytest.raises(SystemExit, match="pip install comet-ml"):
        check("comet_ml")
    monkeypatch.setattr(
        arguments, "get_available_trackers", lambda: [arguments.LoggerType.TENSORBOARD]
    )
    check("all")
    check("tensorboard")
    assert "all" in arguments.TRACKERS and "wandb" in arguments.TRACKERS


def test_fine_tuning_starts_from_a_saved_model(tmp_path, env):
    """--model_name_or_path (a folder, a checkpoint) replaces --model_config: with
    a zero learning rate the weights come out as they went in."""
    first, tuned = tmp_path / "first", tmp_path / "tuned"
    run(base_args(first, steps=2, extra=["--preset", "oa", "--eval_every_epochs", "0"]), env)
    proc = run(
        base_args(
            tuned,
            steps=2,
            extra=[
                "--model_name_or_path",
                str(first / "checkpoint-2"),
                "--learning_rate",
                "0",
                "--use_boundary_loss",
                "false",
                "--eval_every_epochs",
                "0",
            ],
        ),
        env,
    )
    assert f"model {first / 'checkpoint-2'}" in proc.stderr
    a, b = load_file(first / "model.safetensors"), load_file(tuned / "model.safetensors")
    assert a.keys() == b.keys()  # AGM-4 only, as saved, not the tiny default's AGM-3/4/5
    assert all(torch.equal(a[k], b[k]) for k in a if "running" not in k and "tracked" not in k)
    saved = json.loads((tuned / "config.json").read_text())
    assert saved["agm_stages"] == [4] and saved["use_boundary_loss"] is False
    proc = run(
        base_args(
            tmp_path / "bad", steps=1, extra=["--model_name_or_path", str(first), "--preset", "ac"]
        ),
        env,
        check=False,
    )
    assert proc.returncode != 0 and "a preset builds a fresh model" in proc.stderr


def test_a_hub_dataset_in_another_schema_trains_through_the_column_flags(tmp_path, env):
    """--dataset_name with --image_column/--mask_column (the Hub stands in: the
    patch serves load_dataset from the synthetic data under foreign column names)."""
    serve = """
        import datasets
        from agen_hf.data import make_synthetic
        def load_dataset(name, split):
            assert name == "someone/roads"
            ds = make_synthetic(8 if split == "train" else 4, seed=len(split), image_size=64)
            return ds.remove_columns(["labels", "id"]).rename_columns(
                {"image": "photo", "mask": "seg"})
        datasets.load_dataset = load_dataset
    """
    out = tmp_path / "run"
    args = [
        "--dataset_name",
        "someone/roads",
        "--train_split",
        "train",
        "--eval_split",
        "val",
        "--image_column",
        "photo",
        "--mask_column",
        "seg",
        "--model_config",
        "tiny",
        "--per_device_train_batch_size",
        "4",
        "--max_train_steps",
        "2",
        "--num_workers",
        "0",
        "--boundary_crf",
        "torch",
        "--scale_range",
        "64",
        "64",
        "--crop_size",
        "64",
        "--output_dir",
        str(out),
    ]
    proc = run(args, env, patch=serve)
    assert "val mIoU (image-level supervision)" in proc.stdout
    proc = run(args[:6] + args[10:], env, patch=serve, check=False)
    assert proc.returncode != 0 and "--image_column NAME" in proc.stderr


def test_full_supervision_has_no_classification_phase_and_so_no_restart(recipe):
    """The quickstart's classification-first phase and its learning-rate restart belong to
    the weak run: the upper bound from the same config trains branch B in one cycle."""
    quickstart = str(ROOT / "recipes" / "quickstart.yaml")
    weak = flag_values(*recipe.parse_args(["--config", quickstart]))
    assert (weak["seeding_warmup_steps"], weak["lr_restart_at"]) == (2000, 2000)
    assert weak["max_train_steps"] == 3000 and weak["mixed_precision"] == "auto"
    full = flag_values(*recipe.parse_args(["--config", quickstart, "--full_supervision"]))
    assert (full["seeding_warmup_steps"], full["lr_restart_at"]) == (0, 0)
    # the upper bound's own command: one cycle, same network and data
    own = flag_values(
        *recipe.parse_args(["--config", str(ROOT / "recipes" / "quickstart_full.yaml")])
    )
    assert own["full_supervision"] and (own["seeding_warmup_steps"], own["lr_restart_at"]) == (0, 0)
    assert own["max_train_steps"] == 1800 and own["model_config"] == weak["model_config"]
    assert (own["synthetic_size"], own["synthetic_image_size"]) == (
        weak["synthetic_size"],
        weak["synthetic_image_size"],
    )


FORMAT_PROBE = """
import json, os, torch
import agen_hf.modeling_agen as modeling
forward = modeling.AgenModel.forward
def probe(self, pixel_values, *args, **kwargs):
    if self.training:
        cl = torch.channels_last
        with open(os.environ["FORMAT_LOG"], "a") as f:
            f.write(json.dumps([pixel_values.is_contiguous(memory_format=cl),
                                self.stem.conv1.conv1_1.weight.is_contiguous(memory_format=cl)])
                    + "\\n")
    return forward(self, pixel_values, *args, **kwargs)
modeling.AgenModel.forward = probe
"""


def test_channels_last_trains_the_same_numbers_and_saves_a_plain_model(tmp_path, env):
    """--channels_last changes the memory order of the weights and the training images, not
    the training: the same losses and weights up to float rounding; the saved model loads."""
    runs = {}
    for name, extra in (("plain", []), ("cl", ["--channels_last"])):
        out, formats = tmp_path / name, tmp_path / f"{name}.formats"
        run(
            base_args(
                out, steps=4, extra=[*extra, "--synthetic_size", "8", "--seeding_warmup_steps", "2"]
            ),
            {**env, "FORMAT_LOG": str(formats)},
            patch=FORMAT_PROBE,
        )
        seen = {tuple(json.loads(line)) for line in formats.read_text().splitlines()}
        runs[name] = out, seen
    assert runs["plain"][1] == {(False, False)} and runs["cl"][1] == {(True, True)}
    plain, cl = (log(runs[n][0]) for n in ("plain", "cl"))
    assert [r["step"] for r in cl] == [1, 2, 3, 4]
    for a, b in zip(plain, cl):
        assert set(a) == set(b)
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    weights = [load_file(runs[n][0] / "model.safetensors") for n in ("plain", "cl")]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-3, atol=1e-5)
    from agen_hf import AgenModel

    AgenModel.from_pretrained(runs["cl"][0])


def test_table_2_and_3_rows_are_one_flag_away(recipe, tmp_path):
    """--agm_stages / --coam_stages build any Table 2/3 row (after --preset); a stage set the
    config refuses is an error naming the flags; none given means no AGM."""
    id2label = {0: "background", 1: "a", 2: "b"}
    tiny = ["--model_config", "tiny"]
    model = recipe.build_model(
        recipe.parse_args(tiny + ["--agm_stages", "4", "5", "--coam_stages", "5"]).model,
        id2label,
        "synthetic",
    )
    assert (model.config.agm_stages, model.config.coam_stages) == ((4, 5), (5,))
    assert sorted(model.coam) == ["5"] and model.heads == ["A", "agm5", "agm4"]
    model = recipe.build_model(
        recipe.parse_args(tiny + ["--preset", "ac", "--coam_stages"]).model, id2label, "synthetic"
    )
    assert (model.config.agm_stages, model.config.coam_stages) == ((3, 4, 5), ())
    cfg = tmp_path / "row.yaml"
    cfg.write_text("agm_stages: [3]\ncoam_stages: []\n")
    model = recipe.build_model(
        recipe.parse_args(tiny + ["--config", str(cfg)]).model, id2label, "synthetic"
    )
    assert (model.config.agm_stages, model.config.coam_stages) == ((3,), ())
    with pytest.raises(SystemExit, match="--agm_stages / --coam_stages: coam_stages: CoAM-3"):
        recipe.build_model(
            recipe.parse_args(tiny + ["--agm_stages", "4", "--coam_stages", "3"]).model,
            id2label,
            "synthetic",
        )
