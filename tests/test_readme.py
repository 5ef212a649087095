"""The README's promises that tests can check."""

import re
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agen_hf import AgenConfig, AgenModel

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\n```bash\n(.+?)\n```\n<!-- /test-command -->",
                      readme, re.S)
    assert block and "pytest" in block.group(1)
    extracted = subprocess.run(
        ["bash", "-c", "sed -n '/<!-- test-command -->/,/<!-- \\/test-command -->/p' README.md"
                       " | grep -v -e '^<!--' -e '^```'"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
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


def test_readme_segmentation_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Segment an image in five lines\n\n```python\n(.+?)```", readme,
                     re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    monkeypatch.chdir(tmp_path)
    AgenModel(AgenConfig.tiny()).save_pretrained(tmp_path / "runs" / "quickstart")
    Image.new("RGB", (45, 31), (200, 10, 10)).save(tmp_path / "photo.jpg")
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["mask"].shape == (31, 45) and scope["mask"].dtype == np.uint8
    assert scope["processor"].flip and scope["processor"].scales == (0.5, 1, 1.5, 2)


def test_readme_opens_with_the_quickstart_then_the_test_command():
    readme = (ROOT / "README.md").read_text()
    before_prose = readme.split("**agen_hf** implements")[0]
    commands = re.findall(r"```bash\n(.+?)\n```", before_prose, re.S)
    assert len(commands) == 2
    quickstart, tests = commands
    assert "recipes/train_voc.py" in quickstart and "--config recipes/quickstart.yaml" in quickstart
    assert "pytest" in tests


def test_quickstart_config_is_valid():
    import sys

    sys.path.insert(0, str(ROOT / "recipes"))
    from train_voc import model_config, parse_args

    args = parse_args(["--config", str(ROOT / "recipes" / "quickstart.yaml")])
    assert args.dataset == "synthetic" and args.output_dir == "runs/quickstart"
    assert model_config(args).num_labels == 21
