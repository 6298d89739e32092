"""Tests for dccomp.data (offline datasets) and dccomp.models (LeNet-300-100, LeNet-5)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dccomp.data import (
    DATASETS,
    DEFAULT_FASHION_MNIST_ROOT,
    DatasetNotFoundError,
    get_dataset,
    load_digits,
    load_fashion_mnist,
    read_idx,
)
from dccomp.models import MODELS, LeNet5, LeNet300100, build_model

HAVE_FASHION = Path(DEFAULT_FASHION_MNIST_ROOT, "t10k-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAVE_FASHION, reason="apt-get install -y dataset-fashion-mnist")


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------------- models
def test_lenet300100_params_and_names():
    m = LeNet300100()
    assert _nparams(m) == 266_610
    names = {n for n, _ in m.named_children()}
    assert {"fc1", "fc2", "fc3"} <= names
    assert m.fc1.weight.shape == (300, 784) and m.fc3.weight.shape == (10, 100)


def test_lenet5_params_and_names():
    m = LeNet5()
    assert _nparams(m) == 431_080
    assert {"conv1", "conv2", "fc1", "fc2"} <= {n for n, _ in m.named_children()}
    assert m.conv1.weight.shape == (20, 1, 5, 5) and m.conv2.weight.shape == (50, 20, 5, 5)
    assert m.fc1.weight.shape == (500, 800) and m.fc2.weight.shape == (10, 500)


@pytest.mark.parametrize("model,shape", [(LeNet300100(), (3, 1, 28, 28)), (LeNet5(), (3, 1, 28, 28)),
                                         (LeNet300100(in_features=64), (3, 1, 8, 8))])
def test_forward_shape_and_fx(model, shape):
    x = torch.randn(shape)
    y = model(x)
    assert y.shape == (3, 10) and y.dtype == torch.float32
    gm = torch.fx.symbolic_trace(model)
    torch.testing.assert_close(gm(x), y)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert {"fc1", "fc2"} <= targets


def test_build_model():
    assert _nparams(build_model("lenet-300-100", (1, 28, 28), 10)) == 266_610
    assert _nparams(build_model("lenet-5", (1, 28, 28), 10)) == 431_080
    m = build_model("lenet-300-100", (1, 8, 8), 10)
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="28x28"):
        build_model("lenet-5", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="lenet-300-100"):
        build_model("alexnet", (3, 224, 224), 1000)
    assert set(MODELS) == {"lenet-300-100", "lenet-5"}


# ------------------------------------------------------------------------------- IDX reader
def _write_idx(path, arr, code=0x08, compress=True, truncate=0):
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if truncate:
        raw = raw[:-truncate]
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(raw)


def _fake_fashion(root, n=5, split_prefix="t10k"):
    root.mkdir(parents=True, exist_ok=True)
    imgs = np.arange(n * 28 * 28, dtype=np.uint8).reshape(n, 28, 28)
    lbls = (np.arange(n) % 10).astype(np.uint8)
    _write_idx(root / f"{split_prefix}-images-idx3-ubyte.gz", imgs)
    _write_idx(root / f"{split_prefix}-labels-idx1-ubyte.gz", lbls)
    return imgs, lbls


def test_read_idx_roundtrip(tmp_path):
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    _write_idx(tmp_path / "a.idx", a, code=0x0C, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), a)
    f = np.linspace(0, 1, 6, dtype=np.float32)
    _write_idx(tmp_path / "f.idx.gz", f, code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx.gz"), f)


def test_fake_fashion_loads(tmp_path):
    imgs, lbls = _fake_fashion(tmp_path)
    x, y = load_fashion_mnist(tmp_path, split="test")
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == lbls.tolist()
    expected = (torch.from_numpy(imgs).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(x[:, 0], expected)


def test_env_var_root(tmp_path, monkeypatch):
    _fake_fashion(tmp_path, n=3)
    monkeypatch.setenv("DCCOMP_FASHION_MNIST", str(tmp_path))
    x, _ = load_fashion_mnist(split="test")
    assert x.shape[0] == 3


def test_missing_dataset_message(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError) as ei:
        load_fashion_mnist(missing, split="train")
    msg = str(ei.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert str(missing) in msg and "DCCOMP_FASHION_MNIST" in msg
    assert isinstance(ei.value, FileNotFoundError)
    monkeypatch.setenv("DCCOMP_FASHION_MNIST", str(missing))
    with pytest.raises(DatasetNotFoundError, match="nope"):
        get_dataset("fashion-mnist", "test")


@pytest.mark.parametrize(
    "corruption",
    ["truncated", "bad_magic", "bad_code", "not_gzip", "extra_bytes", "labels_mismatch", "truncated_gzip"],
)
def test_corrupt_idx(tmp_path, corruption):
    imgs, lbls = _fake_fashion(tmp_path)
    ipath = tmp_path / "t10k-images-idx3-ubyte.gz"
    if corruption == "truncated":
        _write_idx(ipath, imgs, truncate=100)
    elif corruption == "bad_magic":
        raw = gzip.decompress(ipath.read_bytes())
        ipath.write_bytes(gzip.compress(b"\x01" + raw[1:]))
    elif corruption == "bad_code":
        raw = gzip.decompress(ipath.read_bytes())
        ipath.write_bytes(gzip.compress(raw[:2] + b"\x42" + raw[3:]))
    elif corruption == "not_gzip":
        ipath.write_bytes(b"this is not a gzip file at all")
    elif corruption == "extra_bytes":
        raw = gzip.decompress(ipath.read_bytes())
        ipath.write_bytes(gzip.compress(raw + b"\x00\x00"))
    elif corruption == "labels_mismatch":
        _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", lbls[:3])
    elif corruption == "truncated_gzip":
        ipath.write_bytes(ipath.read_bytes()[:-20])
    with pytest.raises(ValueError, match="t10k-(images|labels)"):
        load_fashion_mnist(tmp_path, split="test")


@needs_fashion
def test_real_fashion_mnist_test_split():
    x, y = load_fashion_mnist(split="test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert torch.bincount(y).tolist() == [1000] * 10
    # normalised with the training statistics: roughly zero mean / unit std on the test set too
    sub = x[:100]
    assert abs(float(sub.mean())) < 0.2 and 0.8 < float(sub.std()) < 1.2
    assert float(x.min()) == pytest.approx(-0.2860 / 0.3530, abs=1e-5)


def test_split_validation():
    with pytest.raises(ValueError):
        load_fashion_mnist("/nonexistent", split="val")
    with pytest.raises(ValueError):
        load_digits("val")


# ---------------------------------------------------------------------------------- digits
def test_digits_split_deterministic_and_stratified():
    xtr, ytr = load_digits("train")
    xte, yte = load_digits("test")
    assert xtr.shape == (1347, 1, 8, 8) and xte.shape == (450, 1, 8, 8)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert float(xtr.min()) >= 0.0 and float(xtr.max()) <= 1.0
    x2, y2 = load_digits("train")
    assert torch.equal(xtr, x2) and torch.equal(ytr, y2)
    # stratified: per-class test fraction ~= 0.25
    frac = torch.bincount(yte, minlength=10).float() / (torch.bincount(ytr, minlength=10) + torch.bincount(yte, minlength=10))
    assert torch.all((frac - 0.25).abs() < 0.02)
    # disjoint and covering: 1797 distinct images overall (digits has a few duplicate images,
    # so compare counts rather than sets)
    assert len(ytr) + len(yte) == 1797
    # a different seed gives a different split
    xa, _ = load_digits("train", seed=1)
    assert not torch.equal(xa, xtr)


def test_registry():
    assert set(DATASETS) == {"fashion-mnist", "digits"}
    assert DATASETS["fashion-mnist"].input_shape == (1, 28, 28)
    assert DATASETS["digits"].input_shape == (1, 8, 8)
    ds = get_dataset("digits", "test")
    assert isinstance(ds, torch.utils.data.TensorDataset) and len(ds) == 450
    with pytest.raises(ValueError, match="digits.*fashion-mnist"):
        get_dataset("imagenet", "train")


def test_digits_with_lenet300100_end_to_end():
    info = DATASETS["digits"]
    model = build_model("lenet-300-100", info.input_shape, info.num_classes)
    x, y = info.load("train")
    assert model(x[:16]).shape == (16, 10)
