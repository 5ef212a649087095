"""End-to-end tests: the recipes run as a user runs them (in this interpreter or in fresh
processes), and the faults they meet. All are marked ``slow``: ``pytest -m "not slow"`` runs
the unit tests alone."""

import os

import pytest


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A recipe's environment: its own datasets cache, offline, one thread a process."""
    return {
        **os.environ,
        "HF_DATASETS_CACHE": str(tmp_path_factory.mktemp("hf-cache")),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "AGEN_HF_PROGRESS_BARS": "off",
    }


def pytest_collection_modifyitems(config, items):
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.slow)
