"""The README's promises that tests can check."""

import re
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agen_hf import AgenConfig, AgenModel

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- test-command -->\n```bash\n(.+?)\n```\n<!-- /test-command -->", readme, re.S
    )
    assert block and "pytest" in block.group(1)
    extracted = subprocess.run(
        [
            "bash",
            "-c",
            "sed -n '/<!-- test-command -->/,/<!-- \\/test-command -->/p' README.md"
            " | grep -v -e '^<!--' -e '^```'",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == block.group(1)
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_readme_model_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## The model in ten lines\n\n```python\n(.+?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 13
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["mask"].shape == (2, 8, 8) and scope["mask"].dtype == torch.int64
    assert (tmp_path / "agen-tiny" / "model.safetensors").exists()


def segmentation_blocks() -> tuple[str, str]:
    """The five-line block and the transformers-way block after it."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(
        r"## Segment an image in five lines\n\n```python\n(.+?)```\n\n"
        r"The transformers way.+?```python\n(.+?)```",
        readme,
        re.S,
    )
    assert found, "README: the five lines, then 'The transformers way' and its block"
    return found.group(1), found.group(2)


def run_five_lines(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    AgenModel(AgenConfig.tiny()).save_pretrained(tmp_path / "runs" / "quickstart")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg")
    code, _ = segmentation_blocks()
    assert len([line for line in code.splitlines() if line.strip()]) == 5  # blank lines aside
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    return scope


def test_readme_segmentation_example_runs(tmp_path, monkeypatch):
    from agen_hf import segment

    scope = run_five_lines(tmp_path, monkeypatch)
    assert scope["mask"].shape == (31, 45) and scope["mask"].dtype == np.uint8
    # it is the multi-scale + flip segmentation the line asks for
    expected = segment(scope["model"], scope["image"], scales=(0.5, 1, 1.5, 2), flip=True)
    assert np.array_equal(scope["mask"], expected)


def test_readme_transformers_way_equals_segment_at_one_scale(tmp_path, monkeypatch):
    from agen_hf import segment

    scope = run_five_lines(tmp_path, monkeypatch)
    _, code = segmentation_blocks()
    exec(compile(code, "README.md", "exec"), scope)
    mask = scope["mask"]
    assert mask.shape == (31, 45) and mask.dtype == torch.int64
    assert set(scope["inputs"]) == {"pixel_values"}
    assert scope["inputs"].pixel_values.shape == (1, 3, 32, 48)
    assert np.array_equal(mask.numpy(), segment(scope["model"], scope["image"]))


def test_readme_opens_with_the_quickstart_then_the_test_command():
    readme = (ROOT / "README.md").read_text()
    before_prose = readme.split("**agen_hf** implements")[0]
    commands = re.findall(r"```bash\n(.+?)\n```", before_prose, re.S)
    assert len(commands) == 2
    quickstart, tests = commands
    assert "recipes/train_voc.py" in quickstart and "--config recipes/quickstart.yaml" in quickstart
    assert "pytest" in tests
    # the upper bound's command, between its markers, so that anyone can rerun the pair
    block = readme.split("<!-- upper-bound-command -->")[1].split("<!-- /upper-bound-command -->")
    assert len(block) == 2 and "--config recipes/quickstart_full.yaml" in block[0]


def test_quickstart_config_is_valid():
    import sys

    sys.path.insert(0, str(ROOT / "recipes"))
    from train_voc import build_model, parse_args

    from agen_hf.data import SYNTHETIC_CLASS_NAMES, id2label_for

    data, agen, training = parse_args(["--config", str(ROOT / "recipes" / "quickstart.yaml")])
    assert data.dataset == "synthetic" and training.output_dir == "runs/quickstart"
    config = build_model(agen, id2label_for(SYNTHETIC_CLASS_NAMES), data.dataset).config
    assert config.num_labels == 21 and config.id2label[1] == "ellipse-disk"
