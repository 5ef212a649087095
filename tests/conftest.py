import pytest
import torch


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
