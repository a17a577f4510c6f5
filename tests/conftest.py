"""Shared fixtures: seeded random DeiT-tiny weights, perturbed so nothing is trivially 0 or 1."""
import pytest
import torch

from deit_functional import load_weights


def random_timm_model(seed=0):
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # timm zero-inits biases and ones LayerNorm scales: perturb all
    return model


@pytest.fixture(scope="session")
def timm_model():
    return random_timm_model()


@pytest.fixture(scope="session")
def weights(timm_model):
    return load_weights(timm_model)


@pytest.fixture(scope="session")
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
