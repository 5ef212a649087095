import os

import pytest
import torch


def pytest_configure(config):
    """Under ``pytest -n N`` each worker computes on its share of the cores: N workers of
    torch's default (every core) each would oversubscribe them, and oneDNN's waiting threads
    then slow a step down up to 20x."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A saved tiny AgenModel (random weights), as recipes take it with --model."""
    from agen_hf import AgenConfig, AgenModel

    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("model")
    AgenModel(AgenConfig.tiny()).save_pretrained(path)
    return path
