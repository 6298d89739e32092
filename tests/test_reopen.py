"""``dccomp.load_compiled``: a ``.dcc`` file reopened as a compressed model (issue #13, part 1).

The IR rebuilt from the file carries its masks, codebooks, indices and coded streams, so: saving it again writes
the identical bytes; it lowers with the torch and TVM backends to the outputs of the original compile; more
passes run on it, and passes whose requirements its state does not meet fail clearly.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dccomp
from dccomp.errors import PassError
from dccomp.ir import State
from dccomp.models import LeNet300100

X = torch.zeros(1, 1, 28, 28)

LENET_PIPELINES = {
    "huffman": ("prune{sparsity=0.9},cluster{bits=4},huffman", "coded"),
    "ans-auto": ("prune{sparsity=0.9},cluster{bits=4},ans{index_bits=auto}", "coded"),
    "fixed-fp16": ("prune{layers={\"fc1\":0.95,\"fc2\":0.8}},cluster{bits=3},"
                   "entropy-code{coder=fixed,codebook_dtype=float16}", "coded"),
    "clustered": ("prune{sparsity=0.9},cluster{bits=4}", "clustered"),
    "excluded": ("prune{sparsity=0.9},cluster{bits=4,exclude=fc3},huffman", "coded masked"),
    "masked": ("prune{sparsity=0.9}", "masked"),
    "dense": ("", "dense"),
}


class BNNet(nn.Module):
    """Conv + BatchNorm + Linear: ``fold-bn`` folds ``bn`` into ``conv`` (which has no bias of its own)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _bn_net(seed: int = 0) -> BNNet:
    torch.manual_seed(seed)
    m = BNNet()
    with torch.no_grad():  # non-trivial statistics, so folding changes the weights
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.uniform_(0.5, 2)
        m.bn.bias.uniform_(-1, 1)
    return m.eval()


@pytest.fixture(scope="module")
def lenet_files(tmp_path_factory):
    """``{name: (compiled, path)}`` for every pipeline of :data:`LENET_PIPELINES`."""
    d = tmp_path_factory.mktemp("reopen")
    out = {}
    for name, (pipe, _) in LENET_PIPELINES.items():
        torch.manual_seed(0)
        c = dccomp.compile(LeNet300100(), pipe, example_inputs=X)
        c.save(d / f"{name}.dcc")
        out[name] = (c, d / f"{name}.dcc")
    return out


@pytest.mark.parametrize("name", list(LENET_PIPELINES))
def test_lenet_reopen_resaves_byte_identical(lenet_files, tmp_path, name):
    compiled, path = lenet_files[name]
    reopened = dccomp.load_compiled(path, LeNet300100())
    assert isinstance(reopened, dccomp.CompiledModel) and not reopened.training
    assert {str(w.state) for w in reopened.ir} == set(LENET_PIPELINES[name][1].split())
    for w in reopened.ir:  # the state is the compiled model's, field by field
        ref = compiled.ir.weights[w.name]
        for field in ("mask", "codebook", "indices"):
            a, b = getattr(w, field), getattr(ref, field)
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), (w.name, field)
        assert w.bits == ref.bits
        if ref.coded is not None:
            assert (w.coded.coder, w.coded.index_bits, w.coded.meta, w.coded.n_fillers) == (
                ref.coded.coder, ref.coded.index_bits, ref.coded.meta, ref.coded.n_fillers)
            assert w.coded.streams == ref.coded.streams
    assert reopened.save(tmp_path / "again.dcc") == path.stat().st_size
    assert (tmp_path / "again.dcc").read_bytes() == path.read_bytes()
    if not compiled.ir.skipped:
        assert str(reopened.report()) == str(compiled.report())
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(reopened(x), compiled.eval()(x))
    # recompiling with no passes keeps the compressed size (a dense reload would be ~1 MB again)
    assert dccomp.compile(reopened).save(tmp_path / "re.dcc") == path.stat().st_size


def test_reopen_from_bytes_and_plain_load_stays_dense(lenet_files):
    _, path = lenet_files["huffman"]
    reopened = dccomp.load_compiled(path.read_bytes(), LeNet300100())
    assert reopened.ir.min_state() == State.CODED
    plain = dccomp.load(path, model=LeNet300100())
    assert isinstance(plain, LeNet300100)  # dccomp.load keeps its meaning: a dense module


def test_more_passes_on_a_reopened_model(lenet_files, tmp_path):
    compiled, path = lenet_files["huffman"]
    reopened = dccomp.load_compiled(path, LeNet300100())
    recoded = dccomp.compile(reopened, "ans")  # entropy-code again with another coder: values unchanged
    assert {w.coded.coder for w in recoded.ir} <= {"ans", "fixed"} and "ans" in {w.coded.coder for w in recoded.ir}
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(recoded(x), compiled.eval()(x))
    with pytest.raises(PassError, match=r"fc1.weight.* is already (entropy-)?coded"):
        dccomp.compile(reopened, "prune{sparsity=0.95}")
    with pytest.raises(PassError, match=r"fc1.weight.* is already (entropy-)?coded"):
        dccomp.compile(reopened, "cluster{bits=2}")
    # a coded file whose cluster pass left a layer out can be coded again (the layer stays as it is)
    excluded = dccomp.load_compiled(lenet_files["excluded"][1], LeNet300100())
    assert list(excluded.ir.skipped) == ["fc3.weight"]
    again = dccomp.compile(excluded, "ans")
    assert again.ir.weights["fc3.weight"].state == State.MASKED and torch.equal(again(x), excluded(x))
    # a pruned-only file continues exactly as the in-memory model would
    masked, mpath = lenet_files["masked"]
    more = "prune{sparsity=0.95},cluster{bits=4},huffman"
    dccomp.compile(dccomp.load_compiled(mpath, LeNet300100()), more).save(tmp_path / "a.dcc")
    dccomp.compile(masked, more).save(tmp_path / "b.dcc")
    assert (tmp_path / "a.dcc").read_bytes() == (tmp_path / "b.dcc").read_bytes()


@pytest.mark.parametrize("capture, pipeline, folded", [
    ("fx", "fold-bn,prune{sparsity=0.5},cluster{bits=4},huffman", {"bn": "conv"}),
    ("export", "prune{sparsity=0.5},cluster{bits=4},ans", {}),  # fold-bn folds module calls: fx graphs only
])
def test_bn_cnn_reopens_byte_identical(tmp_path, capture, pipeline, folded):
    x = torch.randn(2, 1, 8, 8)
    compiled = dccomp.compile(_bn_net(), pipeline, example_inputs=x, capture=capture)
    assert compiled.ir.folded == folded and compiled.ir.capture == capture
    compiled.save(tmp_path / "cnn.dcc")
    reopened = dccomp.load_compiled(tmp_path / "cnn.dcc", BNNet(), example_inputs=x, capture=capture)
    assert reopened.ir.folded == folded and reopened.ir.capture == capture
    assert reopened.ir.min_state() == State.CODED
    reopened.save(tmp_path / "again.dcc")
    assert (tmp_path / "again.dcc").read_bytes() == (tmp_path / "cnn.dcc").read_bytes()
    assert torch.equal(reopened(x), compiled.eval()(x))


def test_reopen_with_a_graph_that_reads_the_weights_differently_is_a_clear_error(lenet_files):
    class MatmulNet(LeNet300100):  # same state_dict; fc1's weight read by a matmul: not a compressible weight
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Module()
            self.fc1.weight = nn.Parameter(torch.zeros(300, 784))
            self.fc1.bias = nn.Parameter(torch.zeros(300))

        def forward(self, x):
            x = torch.relu(torch.matmul(x.flatten(1), self.fc1.weight.t()) + self.fc1.bias)
            return self.fc3(torch.relu(self.fc2(x)))

    with pytest.raises(ValueError, match=r"compressed in the file but not a compressible weight.*fc1\.weight"):
        dccomp.load_compiled(lenet_files["huffman"][1], MatmulNet())
    with pytest.raises(TypeError, match="nn.Module"):
        dccomp.load_compiled(lenet_files["huffman"][1], "lenet")


def test_reopened_model_lowers_with_tvm_like_the_original(lenet_files, tmp_path):
    pytest.importorskip("tvm")
    compiled, path = lenet_files["huffman"]
    x = torch.randn(2, 1, 28, 28)
    reopened = dccomp.load_compiled(path, LeNet300100(), backend="tvm", example_inputs=x)
    original = dccomp.compile(compiled, backend="tvm", example_inputs=x)
    assert "sparse_linear" in repr(reopened.lowered)
    y = reopened(x)
    assert torch.equal(y, original(x))
    torch.testing.assert_close(y, compiled.eval()(x), rtol=1e-5, atol=1e-6)
    reopened.save(tmp_path / "t.dcc")  # the TVM-lowered model saves the same file too
    assert (tmp_path / "t.dcc").read_bytes() == path.read_bytes()


def test_reopened_folded_cnn_lowers_with_tvm(tmp_path):
    pytest.importorskip("tvm")
    x = torch.randn(2, 1, 8, 8)
    compiled = dccomp.compile(_bn_net(1), "fold-bn,prune{sparsity=0.5},cluster{bits=4},huffman", example_inputs=x)
    compiled.save(tmp_path / "cnn.dcc")
    reopened = dccomp.load_compiled(tmp_path / "cnn.dcc", BNNet(), backend="tvm", example_inputs=x)
    torch.testing.assert_close(reopened(x), compiled.eval()(x), rtol=1e-5, atol=1e-5)
