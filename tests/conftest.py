"""Shared fixtures for the pass tests (prune / retrain / cluster / peer failures / digits accuracy).

* ``check_ir(ir)`` -- runs :func:`dccomp.verify` and re-checks the core invariants directly (pruned entries
  exactly 0, clustered weights == codebook[indices], indices in range), so a verifier bug cannot hide a pass bug.
* ``always_verify`` -- autouse-able: every ``PassManager`` built while it is active verifies the IR before
  and after each pass (``verify=True``), whatever the test asked for. Use it with
  ``pytestmark = pytest.mark.usefixtures("always_verify")``.
* small data/model helpers: ``tiny_mlp``, ``tiny_data``, ``make_trainer``.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings
from torch import nn

import dccomp
from dccomp.ir import IR
from dccomp.manager import PassManager


# Property tests draw the same examples on every run (CI's result must not depend on chance);
# HYPOTHESIS_PROFILE=explore draws new ones each run to search for more failures.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def check_ir_invariants(ir: IR) -> None:
    """Verify ``ir`` with dccomp's verifier and independently with plain tensor checks."""
    dccomp.verify(ir)
    for w in ir.weights.values():
        p = ir.param(w.name).detach()
        assert torch.isfinite(p).all(), w.name
        if w.mask is not None:
            assert w.mask.dtype == torch.bool and w.mask.shape == p.shape, w.name
            assert torch.count_nonzero(p[~w.mask]) == 0, f"{w.name}: pruned entries are not exactly 0"
        if w.codebook is not None:
            live = w.mask if w.mask is not None else torch.ones_like(p, dtype=torch.bool)
            idx = w.indices[live]
            if idx.numel():
                assert 0 <= int(idx.min()) and int(idx.max()) < w.codebook.shape[-1], w.name
                if w.codebook.dim() == 1:
                    assert torch.equal(p[live], w.codebook[idx]), f"{w.name}: weights != codebook[indices]"
                else:  # per-channel: row g serves dim-0 slices [g*S, (g+1)*S)
                    rows = w.codebook.repeat_interleave(p.shape[0] // w.codebook.shape[0], dim=0)
                    flat_rows = rows.reshape(p.shape[0], 1, -1).expand(-1, p[0].numel(), -1).reshape(p.numel(), -1)
                    want = flat_rows.gather(1, w.indices.reshape(-1, 1)).reshape(p.shape)
                    assert torch.equal(p[live], want[live]), f"{w.name}: weights != codebook[row, indices]"


@pytest.fixture
def check_ir():
    """The IR checker as a fixture: ``check_ir(ir)`` raises if any invariant is broken."""
    return check_ir_invariants


@pytest.fixture
def always_verify(monkeypatch):
    """Force ``verify=True`` on every PassManager created during the test (also inside ``dccomp.compile``)."""
    orig = PassManager.__init__
    runs = []

    def init(self, passes, *, verify=False, clone=True):
        orig(self, passes, verify=True, clone=clone)
        runs.append(self)

    monkeypatch.setattr(PassManager, "__init__", init)
    return runs


class TinyMLP(nn.Module):
    def __init__(self, d_in: int = 12, hidden: int = 16, d_out: int = 3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.fixture
def tiny_mlp():
    torch.manual_seed(0)
    return TinyMLP()


def make_data(n: int = 64, d_in: int = 12, n_classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    return x, y


@pytest.fixture
def tiny_data():
    return make_data()


def make_trainer(data, **kw) -> dccomp.Trainer:
    kw.setdefault("batch_size", 16)
    return dccomp.Trainer(data, **kw)


@pytest.fixture
def data_factory():
    """``data_factory(n, d_in, n_classes, seed) -> (X, y)`` random classification data."""
    return make_data


@pytest.fixture
def trainer_factory():
    """``trainer_factory(data, **Trainer kwargs)`` (batch_size 16 by default)."""
    return make_trainer


@pytest.fixture
def one_thread():
    """Run the test with one intra-op torch thread (tiny models: faster, and stable on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
