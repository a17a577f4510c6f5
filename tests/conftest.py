"""Shared fixtures: a seeded random timm model, its weights loaded into the package, inputs."""
import pytest
import torch

from deit_functional import load_weights
from timm_reference import random_timm_model


@pytest.fixture(scope="session")
def timm_model():
    return random_timm_model()


@pytest.fixture(scope="session")
def weights(timm_model):
    return load_weights(timm_model)


@pytest.fixture(scope="session")
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
