"""Lowering dccomp IRs (LeNet-300-100, LeNet-5) to TVM and running / exporting them."""
import json

import pytest

tvm = pytest.importorskip("tvm")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import dccomp  # noqa: E402
from dccomp.models import LeNet300100  # noqa: E402
from dccomp.trace import trace  # noqa: E402
from dccomp.backends.tvm import TVMBackend  # noqa: E402
from dccomp.backends.tvm.lower import device_source  # noqa: E402


def compress(ir, sparsity=0.9, k=32):
    """Magnitude-prune + linear-init codebook quantization, written straight into the IR's weight states
    (the same state the prune and cluster passes leave: mask, codebook, indices; param = codebook[idx]*mask)."""
    for w in ir.weights.values():
        p = ir.param(w.name).detach()
        thr = p.abs().flatten().kthvalue(max(1, int(sparsity * p.numel()))).values
        mask = p.abs() > thr
        cb = torch.linspace(p.min().item(), p.max().item(), k)
        idx = (p.unsqueeze(-1) - cb).abs().argmin(-1)
        idx = torch.where(mask, idx, torch.zeros_like(idx))
        w.mask, w.codebook, w.indices, w.bits = mask, cb.float(), idx.long(), int(np.ceil(np.log2(k)))
        with torch.no_grad():
            ir.param(w.name).copy_(cb[idx] * mask)
    return ir


def lenet300():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = self.pool1(self.conv1(x))
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        x = x.view(x.size(0), -1)
        return self.fc2(torch.relu(self.fc1(x)))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("make", [lenet300, LeNet5])
def test_lenets_match_torch(make):
    x = torch.randn(3, 1, 28, 28)
    ir = compress(trace(make(), (x,)))
    m = TVMBackend().lower(ir, target="llvm", example_inputs=(x,))
    with torch.no_grad():
        assert _rel(m(x), ir.gm(x)) <= 1e-5
        x1 = torch.randn(1, 1, 28, 28)  # other batch size: recompiled on demand
        assert _rel(m(x1), ir.gm(x1)) <= 1e-5
    kinds = {layer.name: layer.kind for layer in m.layers}
    lin = [n for n, k in kinds.items() if k == "sparse_linear"]
    assert len(lin) == (3 if make is lenet300 else 2)
    if make is lenet300:
        assert [layer.fused_relu for layer in m.layers] == [True, True, False]
        # compressed constants: ~3 B per surviving weight (+rowptr, codebook, bias), far below 4 B per weight
        dense_bytes = 4 * (784 * 300 + 300 * 100 + 100 * 10)
        assert m.weight_nbytes < 0.1 * dense_bytes


def test_dense_layers_use_dense_kernel():
    x = torch.randn(2, 1, 28, 28)
    ir = compress(trace(lenet300(), (x,)), sparsity=0.2)  # 80% dense: above the sparse/dense threshold
    m = TVMBackend().lower(ir, example_inputs=(x,))
    assert {layer.kind for layer in m.layers} <= {"dense_linear", "code_linear"}  # dense float32 or 4/8-bit codes
    with torch.no_grad():
        assert _rel(m(x), ir.gm(x)) <= 1e-5


def test_unfused_relu_and_functional_ops():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            h = self.fc1(torch.flatten(x, 1))
            return self.fc2(nn.functional.relu(h)) + self.fc2(h.relu())  # h used twice: no fusion

    x = torch.randn(2, 1, 28, 28)
    ir = compress(trace(M(), (x,)))
    m = TVMBackend().lower(ir, example_inputs=(x,))
    assert [(layer.name, layer.kind, layer.fused_relu, layer.calls) for layer in m.layers] == [
        ("fc1", "sparse_linear", False, 1), ("fc2", "sparse_linear", False, 2)]  # fc2 stored once, called twice
    with torch.no_grad():
        assert _rel(m(x), ir.gm(x)) <= 1e-5


class Erfinv(nn.Module):
    def forward(self, x):
        return torch.erfinv(x)


def test_unsupported_op_names_op_and_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), Erfinv())
    x = torch.randn(1, 1, 28, 28)
    ir = compress(trace(model, (x,)))
    with pytest.raises(NotImplementedError, match=r"aten.erfinv.default at layer '2' \(Erfinv\).*backend='torch'"):
        TVMBackend().lower(ir, example_inputs=(x,))


def test_unaligned_input_is_copied():
    """torch.from_numpy and offset views need not be 64-byte aligned; TVM's DLPack import refuses them."""
    x = torch.randn(2, 1, 28, 28)
    ir = compress(trace(lenet300(), (x,)))
    m = TVMBackend().lower(ir, example_inputs=(x,))
    buf = torch.randn(2 * 784 + 1)
    view = buf[1:].view(2, 1, 28, 28)  # 4-byte offset
    assert view.data_ptr() % 64
    with torch.no_grad():
        assert _rel(m(view), ir.gm(view)) <= 1e-5


def test_cross_target_cannot_run_but_exports_aarch64(tmp_path):
    import shutil
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    x = torch.randn(1, 1, 28, 28)
    ir = compress(trace(lenet300(), (x,)))
    m = TVMBackend().lower(ir, target="arm_cpu", example_inputs=(x,))
    with pytest.raises(RuntimeError, match="only be exported"):
        m(x)
    so, js = TVMBackend().export(ir, tmp_path, target="arm_cpu", example_inputs=(x,))
    head = so.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    meta = json.loads(js.read_text())
    assert meta["inputs"] == [{"name": "x0", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert meta["outputs"] == [{"shape": [1, 10], "dtype": "float32"}]
    assert meta["target"]["mtriple"] == "aarch64-linux-gnu"
    assert [layer["kernel"] for layer in meta["layers"]] == ["sparse_linear"] * 3


def test_export_host_roundtrip(tmp_path):
    x = torch.randn(2, 1, 28, 28)
    ir = compress(trace(LeNet5(), (x,)))
    so, js = TVMBackend().export(ir, tmp_path, target="llvm", example_inputs=(x,), name="lenet5")
    lib = tvm.runtime.load_module(str(so))
    vm = tvm.relax.VirtualMachine(lib, tvm.cpu())
    y = torch.from_numpy(vm["main"](x.numpy()).numpy())
    with torch.no_grad():
        assert _rel(y, ir.gm(x)) <= 1e-5


@pytest.mark.parametrize("target,kind", [("cuda", "cuda"), ("mali", "opencl")])
def test_gpu_lowering_has_device_code(target, kind):
    x = torch.randn(2, 1, 28, 28)
    ir = compress(trace(lenet300(), (x,)))
    m = TVMBackend().lower(ir, target=target, example_inputs=(x,))
    src = device_source(m.executable, kind)
    assert src, f"no {kind} device module"
    for layer in ("dcc_1", "dcc_3", "dcc_5"):
        assert layer in src


def test_missing_tvm_message(monkeypatch):
    import builtins
    import dccomp.backends.tvm as backend

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "tvm" or name.startswith("tvm."):
            raise ImportError("No module named 'tvm'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"pip install 'dccomp\[tvm\]'"):
        backend.TVMBackend().lower(None)


@pytest.mark.parametrize("make", [lenet300, LeNet5])
def test_real_pipeline_prune_cluster(make):
    import dccomp
    if not hasattr(dccomp, "compile"):
        pytest.skip("dccomp.compile not available yet")
    x = torch.randn(2, 1, 28, 28)
    compiled = dccomp.compile(make(), passes="prune{sparsity=0.9},cluster{bits=5}", example_inputs=(x,))
    ir = getattr(compiled, "ir", compiled)
    m = TVMBackend().lower(ir, example_inputs=(x,))
    assert any(layer.kind == "sparse_linear" for layer in m.layers)
    with torch.no_grad():
        assert _rel(m(x), ir.gm(x)) <= 1e-5


def test_outputs_are_not_overwritten_by_later_calls():
    """Inputs and outputs cross the torch/TVM boundary zero-copy (DLPack): each call must own its output."""
    torch.manual_seed(0)
    x1, x2 = torch.randn(1, 1, 28, 28), torch.randn(1, 1, 28, 28)
    c = dccomp.compile(LeNet300100(), "prune{sparsity=0.9},cluster{bits=4}", example_inputs=x1)
    t = dccomp.compile(c, backend="tvm", example_inputs=x1)
    y1 = t(x1)
    kept = y1.clone()
    y2 = t(x2)
    assert torch.equal(y1, kept) and not torch.equal(y1, y2)
    torch.testing.assert_close(y2, c(x2), rtol=1e-5, atol=1e-6)


def test_cli_build_writes_aarch64_artifact(tmp_path):
    from dccomp.cli import main

    torch.manual_seed(0)
    c = dccomp.compile(LeNet300100(), "prune{sparsity=0.9},cluster{bits=4},huffman", example_inputs=torch.zeros(1, 1, 28, 28))
    c.save(tmp_path / "m.dcc")
    main(["build", str(tmp_path / "m.dcc"), "--model", "lenet-300-100", "--target", "arm_cpu", "--out", str(tmp_path / "out")])
    so = next((tmp_path / "out").glob("*.so"))
    head = so.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    info = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert info["layers"] and all(layer["kernel"] == "sparse_linear" for layer in info["layers"])
    before = so.read_bytes()  # a second build into the same folder needs --force (found by a new user)
    with pytest.raises(SystemExit) as e:
        main(["build", str(tmp_path / "m.dcc"), "--model", "lenet-300-100", "--target", "llvm", "--out",
              str(tmp_path / "out")])
    assert e.value.code == 2 and so.read_bytes() == before


def test_bad_inputs_and_options_are_clear_errors():
    """Found by a new user: ids outside an embedding were clamped silently, option typos ignored, and bad
    inputs reported as a torch.export failure."""
    from dccomp.archs import TransformerClassifier

    model = TransformerClassifier(100, 16, 2, 1, 32, 8, 3).eval()
    ids = torch.randint(0, 100, (2, 8))
    ir = compress(trace(model, (ids,)), sparsity=0.8, k=8)
    m = TVMBackend().lower(ir, example_inputs=(ids,))
    for bad in (100, -1, 10**7):
        x = ids.clone()
        x[0, 0] = bad
        with pytest.raises(IndexError, match=f"id {bad}, outside the 100 rows of embedding 'tok'"):
            m(x)
    with pytest.raises(TypeError, match="compiled for int64"):
        m(ids.float())
    with pytest.raises(TypeError, match="keyword"):
        m(ids=ids)
    with pytest.raises(TypeError, match="takes 1 input"):
        m(ids, ids)
    with pytest.raises(ValueError, match="2-d inputs"):
        m(ids[0])
    with pytest.raises(TypeError, match=r"unknown TVM backend option\(s\) \['weigths'\]"):
        TVMBackend().lower(ir, example_inputs=(ids,), weigths="small")
    with pytest.raises(ValueError, match="weights='tiny'"):
        TVMBackend().lower(ir, example_inputs=(ids,), weights="tiny")
    with pytest.raises(ValueError, match="kernel='bogus'"):
        TVMBackend().lower(ir, example_inputs=(ids,), kernel="bogus")


def test_wrong_example_inputs_and_option_types(tmp_path):
    """Found by a second new-user trial: a wrong example shape was reported as a torch.export failure, a string
    backend_options as a dict-update error, load(None) and --json DIR as raw Python errors."""
    from dccomp.cli import main

    x = torch.zeros(1, 1, 28, 28)
    c = dccomp.compile(LeNet300100(), "prune{sparsity=0.9}", example_inputs=x)
    with pytest.raises(ValueError, match=r"does not run on example inputs \[1, 3, 32, 32\] float32"):
        dccomp.compile(c, backend="tvm", example_inputs=torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="backend_options must be a dict"):
        dccomp.compile(c, backend="tvm", example_inputs=x, backend_options="small")
    with pytest.raises(TypeError, match="takes a file path"):
        dccomp.load(None)
    with pytest.raises(SystemExit) as e:
        main(["demo", "--data", "digits", "--json", str(tmp_path)])
    assert e.value.code == 2
