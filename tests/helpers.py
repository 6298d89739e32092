"""Plain helpers shared by several test modules (imported as ``from helpers import ...``; pytest puts ``tests/``
on ``sys.path`` because it has no ``__init__.py``). Fixtures live in ``conftest.py``."""
from __future__ import annotations

import torch
from torch import nn

import dccomp.models


def laplace_mlp(seed: int = 0) -> nn.Module:
    """LeNet-300-100 with Laplace-distributed weights (trained nets look like this): skewed cluster usage."""
    torch.manual_seed(seed)
    m = dccomp.models.LeNet300100()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            u = torch.rand(p.shape, generator=g) - 0.5
            p.copy_(-0.05 * torch.sign(u) * torch.log1p(-2 * u.abs()))
    return m
