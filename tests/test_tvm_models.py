"""Whole real architectures through the TVM backend: outputs equal the torch backend's, every compressed weight
runs on a dccomp kernel, and every model builds for the arm_cpu, cuda and mali targets."""
import pytest

tvm = pytest.importorskip("tvm")

import shutil  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import dccomp  # noqa: E402
from dccomp.archs import TransformerClassifier, resnet18  # noqa: E402
from dccomp.backends.tvm import TVMBackend  # noqa: E402
from dccomp.backends.tvm.lower import device_source  # noqa: E402
from dccomp.trace import trace  # noqa: E402

from test_tvm_lower import LeNet5, _rel, compress, lenet300  # noqa: E402


def _bn_stats(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m.eval()


class Functional(nn.Module):
    """F.conv2d / F.linear on the module's own parameters (get_attr nodes, no Conv2d/Linear modules)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8))
        self.w2 = nn.Parameter(torch.randn(10, 8 * 8 * 8) * 0.05)

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w1, self.b1, stride=2, padding=1))
        return F.linear(y.flatten(1), self.w2)


class Recurrent(nn.Module):
    """Embedding -> 2-layer LSTM -> GRU -> last step (negative index) -> Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 24, num_layers=2, batch_first=True)
        self.gru = nn.GRU(24, 16, batch_first=True)
        self.fc = nn.Linear(16, 3)

    def forward(self, t):
        return self.fc(self.gru(self.lstm(self.emb(t))[0])[0][:, -1])


class Encoder(nn.Module):
    """torch's own nn.TransformerEncoderLayer (fused in_proj_weight of nn.MultiheadAttention)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 32)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu", batch_first=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, t):
        return self.fc(self.enc(self.emb(t)).mean(1))


def _mobilenet_v2():
    zoo = pytest.importorskip("dccomp.zoo")
    torch.manual_seed(0)
    return _bn_stats(zoo.MobileNetV2(num_classes=10, width_mult=0.25))


MODELS = {
    "lenet300": (lenet300, lambda: torch.randn(1, 1, 28, 28)),
    "lenet5": (LeNet5, lambda: torch.randn(1, 1, 28, 28)),
    "resnet18": (lambda: _bn_stats(resnet18(num_classes=10, width=8)), lambda: torch.randn(1, 3, 32, 32)),
    "mobilenet_v2": (_mobilenet_v2, lambda: torch.randn(1, 3, 32, 32)),
    "transformer": (lambda: TransformerClassifier(100, 32, 4, 2, 64, 16, 3).eval(),
                    lambda: torch.randint(0, 100, (2, 12))),
    "functional": (Functional, lambda: torch.randn(1, 3, 16, 16)),
    "recurrent": (Recurrent, lambda: torch.randint(0, 50, (2, 7))),
    "encoder_layer": (Encoder, lambda: torch.randint(0, 50, (2, 9))),
}


@pytest.fixture(scope="module")
def compressed():
    cache = {}

    def get(name):
        if name not in cache:
            make, example = MODELS[name]
            torch.manual_seed(0)
            x = example()
            if name == "mobilenet_v2":  # BatchNorm folded (ResNet keeps it: the frontend lowers it)
                ir = dccomp.compile(make().eval(), "fold-bn", example_inputs=(x,)).ir
            else:
                ir = trace(make().eval(), (x,))
            ir = compress(ir, sparsity=0.85, k=16)
            cache[name] = ir, x
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_torch_backend(name, compressed):
    ir, x = compressed(name)
    m = TVMBackend().lower(ir, example_inputs=(x,), calibrate=False)  # the measured rule only: deterministic
    with torch.no_grad():
        ref = ir.gm(x)
        assert _rel(m(x), ref) <= 1e-4
    lowered = {layer.name for layer in m.layers}
    assert {w.rsplit(".", 1)[0] if w.endswith(".weight") else w for w in ir.weights} == lowered
    assert all(layer.kind.startswith(("sparse_", "code_", "dense_")) for layer in m.layers), m
    if name == "mobilenet_v2":  # ReLU6 (hardtanh 0..6) runs inside the CPU conv kernels
        assert any(layer.fused_relu == "relu6" for layer in m.layers), m
    # the artifact holds the compressed arrays, not the dense weights
    dense_bytes = 4 * sum(ir.param(w).numel() for w in ir.weights)
    assert sum(layer.const_nbytes for layer in m.layers) < 0.6 * dense_bytes


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "transformer", "functional"])
@pytest.mark.parametrize("target,kind", [("cuda", "cuda"), ("mali", "opencl")])
def test_model_builds_for_gpu_targets(name, target, kind, compressed):
    ir, x = compressed(name)
    m = TVMBackend().lower(ir, target=target, example_inputs=(x,))
    src = device_source(m.executable, kind)
    assert src
    convs = [layer for layer in m.layers if layer.kind.endswith("conv2d")]
    for layer in m.layers:  # every dccomp kernel is a device kernel of the artifact
        assert "dcc_" + layer.name.replace(".", "_") in src
    assert all(layer.kind.startswith("sparse_") for layer in convs)


def test_calibration_times_layers_near_the_crossover(compressed, monkeypatch):
    """By default (a module that runs here, weights="fast") a conv layer whose density is near its class's
    crossover gets the kernel that measured faster on this machine; either way the output is the same."""
    import dccomp.backends.tvm.converters as converters

    monkeypatch.setattr(converters, "BAND", 1.0)  # every conv layer counts as near (crossovers differ per ISA)
    ir, x = compressed("resnet18")
    m = TVMBackend().lower(ir, example_inputs=(x,))
    timed = [layer for layer in m.layers if layer.dtypes.get("chosen_by") == "timing"]
    assert timed and all(layer.kind in ("sparse_conv2d", "code_conv2d", "dense_conv2d") for layer in timed)
    with torch.no_grad():
        assert _rel(m(x), ir.gm(x)) <= 1e-4
    cross = TVMBackend().lower(ir, target="arm_cpu", example_inputs=(x,))  # cannot run here: not timed
    assert not any(layer.dtypes.get("chosen_by") for layer in cross.layers)


def test_small_weights_option_keeps_every_layer_compressed(compressed):
    """weights="small": per layer the fewest bytes (packed relative-index entries for sparse conv on CPU, or
    dense 4-bit codes): the artifact holds less than with the default per-layer fastest kernel."""
    ir, x = compressed("resnet18")
    fast = TVMBackend().lower(ir, example_inputs=(x,), calibrate=False)
    small = TVMBackend().lower(ir, example_inputs=(x,), weights="small")
    assert all(layer.kind.startswith(("sparse_", "code_")) for layer in small.layers)
    assert any(layer.dtypes.get("layout") == "packed" for layer in small.layers)
    assert small.weight_nbytes <= fast.weight_nbytes
    with torch.no_grad():
        assert _rel(small(x), ir.gm(x)) <= 1e-4


@pytest.mark.parametrize("name", ["resnet18", "transformer"])
def test_model_exports_aarch64(name, compressed, tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    ir, x = compressed(name)
    so, _ = TVMBackend().export(ir, tmp_path, target="arm_cpu", example_inputs=(x,))
    head = so.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
