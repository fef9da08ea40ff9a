"""Shared fixtures: the embedded tiny model, loaded once per test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny():
    from sd_struct_rt.model import load_model

    return load_model("tiny")


@pytest.fixture
def fresh_generator():
    """A seeded generator per test: fresh random inputs that still reproduce on failure."""
    return torch.Generator().manual_seed(1234)


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - reference.double()).norm() / reference.double().norm())
