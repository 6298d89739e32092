"""Capture with torch.fx or torch.export, and every weight type compressed: MHA, Transformer, LSTM/GRU/RNN,
Embedding, functional ops on own parameters, depthwise/grouped convolutions, **kwargs and dynamic shapes."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dccomp
from dccomp import State, TracingError

PIPE = "prune{sparsity=0.5},cluster{bits=4},huffman"


class MHA(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.enc(self.emb(ids)).mean(1))


class Recurrent(nn.Module):
    def __init__(self, cls=nn.LSTM):
        super().__init__()
        self.rnn = cls(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class EmbLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 12)
        self.fc = nn.Linear(12, 5)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.randn(6, 3, 3, 3) * 0.3)
        self.kb = nn.Parameter(torch.zeros(6))
        self.w = nn.Parameter(torch.randn(4, 6) * 0.3)

    def forward(self, x):
        y = F.conv2d(x, self.k, self.kb, padding=1).mean((2, 3))
        return F.linear(y, self.w)


class MobileBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gc = nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.pw(F.relu6(self.bn2(self.gc(F.relu6(self.bn1(self.dw(x)))))))


class KwArgs(nn.Module):
    """fx would trace ``kwargs.get("scale") is not None`` as always true."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x, **kwargs):
        scale = kwargs.get("scale")
        y = torch.relu(self.fc(x))
        return self.out(y * scale if scale is not None else y)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x, scale):
        return self.fc(x) * scale


class ForwardsKwargs(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()

    def forward(self, x, opts):
        return self.inner(x, **opts)


class SeqPool(nn.Module):
    """Needs a dynamic sequence length: data-dependent slicing makes fx fail; export with a Dim works."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids, mask):
        h = self.emb(ids)
        if ids.shape[1] > 64:  # fx cannot trace this (data-dependent on the input's shape)
            h = h[:, :64]
        h = self.attn(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
        return self.fc((h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True))


def _seed_model(cls, *a):
    torch.manual_seed(0)
    m = cls(*a)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _check_all_compressed(model, c, expected_kinds):
    ir = c.ir
    assert {w.name: w.kind for w in ir} == expected_kinds
    assert not ir.skipped
    for w in ir:
        assert w.state == State.CODED, w.name
        p = ir.param(w.name).detach()
        assert abs(int(w.mask.sum()) - 0.5 * p.numel()) <= 1, w.name
        assert w.k <= 16 and torch.equal(p != 0, w.mask)
    # parameter names are the user's state_dict names
    names = {n for n, _ in ir.gm.named_parameters(remove_duplicate=False)}
    assert names == {n for n, _ in model.named_parameters(remove_duplicate=False)}


def _check_outputs_and_file(model, c, args, kwargs, tmp_path):
    ref = copy.deepcopy(model).eval()
    ref.load_state_dict({k: v for k, v in c.ir.gm.state_dict().items()}, strict=True)  # the decoded weights
    with torch.no_grad():
        want = ref(*args, **kwargs)
        got = c(*args, **kwargs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    path = tmp_path / "m.dcc"
    assert c.save(path) == path.stat().st_size
    restored = dccomp.load(path, model=copy.deepcopy(model))
    with torch.no_grad():
        torch.testing.assert_close(restored(*args, **kwargs), got, rtol=1e-5, atol=1e-6)
    for name, p in c.ir.gm.named_parameters():
        assert torch.equal(restored.get_parameter(name).detach(), p.detach()), name


RNN_KINDS = {f"rnn.weight_{a}_l{i}{r}": "rnn" for a in ("ih", "hh") for i in (0, 1) for r in ("", "_reverse")}
ENC = {"emb.weight": "embedding", "enc.self_attn.in_proj_weight": "linear", "enc.self_attn.out_proj.weight": "linear",
       "enc.linear1.weight": "linear", "enc.linear2.weight": "linear", "head.weight": "linear"}
CASES = {
    "mha": (MHA, (), lambda: (torch.randn(2, 5, 16),),
            {"attn.in_proj_weight": "linear", "attn.out_proj.weight": "linear", "head.weight": "linear"}),
    "encoder": (Encoder, (), lambda: (torch.randint(0, 30, (2, 7)),), ENC),
    "lstm": (Recurrent, (nn.LSTM,), lambda: (torch.randn(2, 5, 6),), {**RNN_KINDS, "fc.weight": "linear"}),
    "gru": (Recurrent, (nn.GRU,), lambda: (torch.randn(2, 5, 6),), {**RNN_KINDS, "fc.weight": "linear"}),
    "rnn": (Recurrent, (nn.RNN,), lambda: (torch.randn(2, 5, 6),), {**RNN_KINDS, "fc.weight": "linear"}),
    "embedding": (EmbLinear, (), lambda: (torch.randint(0, 40, (3, 6)),),
                  {"emb.weight": "embedding", "fc.weight": "linear"}),
    "functional": (Functional, (), lambda: (torch.randn(2, 3, 6, 6),), {"k": "conv2d", "w": "linear"}),
    "mobile": (MobileBlock, (), lambda: (torch.randn(2, 8, 6, 6),),
               {"dw.weight": "conv2d.depthwise", "gc.weight": "conv2d.grouped", "pw.weight": "conv2d"}),
}


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_weight_type_compressed_run_and_saved(case, capture, tmp_path):
    cls, a, make_inputs, kinds = CASES[case]
    model = _seed_model(cls, *a)
    torch.manual_seed(1)
    args = make_inputs()
    c = dccomp.compile(model, PIPE, example_inputs=args, capture=capture, verify=True)
    assert c.ir.capture == capture
    _check_all_compressed(model, c, kinds)
    _check_outputs_and_file(model, c, args, {}, tmp_path)
    assert (f"capture={capture}" in str(c.ir).splitlines()[0]) == (capture == "export")
    report = c.report()
    assert report.total_bytes == (tmp_path / "m.dcc").stat().st_size


class WithNonPersistentBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.register_buffer("offset", torch.linspace(0, 1, 4), persistent=False)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.fc(x + self.offset))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_non_persistent_buffers_are_kept_and_load_back(capture, tmp_path):
    """The file holds what the model computes with, non-persistent buffers too; load() restores them."""
    model = _seed_model(WithNonPersistentBuffer)
    x = torch.randn(3, 4)
    c = dccomp.compile(model, PIPE, example_inputs=x, capture=capture)
    _check_outputs_and_file(model, c, (x,), {}, tmp_path)
    names = dccomp.load(tmp_path / "m.dcc").names
    assert "offset" in names and "bn.running_mean" in names


def test_dense_reasons_are_true():
    ir = dccomp.trace(_seed_model(Encoder), (torch.randint(0, 30, (2, 7)),))
    reasons = {d.name: d.reason for d in ir.dense}
    assert reasons["enc.norm1.weight"] == "normalization" and reasons["enc.self_attn.in_proj_bias"] == "bias"
    assert not any("supported layer" in r for r in reasons.values())

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.ones(4, 4))
            self.unused = nn.Parameter(torch.ones(3, 3))

        def forward(self, x):
            return torch.matmul(self.fc(x), self.scale)

    for capture in ("fx", "export"):
        reasons = {d.name: d.reason for d in dccomp.trace(Odd(), torch.randn(2, 4), capture=capture).dense}
        assert reasons["scale"].startswith("read by matmul, not as the weight of"), capture
        assert reasons["unused"] == "unused by the traced graph", capture


def test_kwargs_forward_auto_falls_back_to_export_with_a_warning(tmp_path):
    model = _seed_model(KwArgs)
    x, scale = torch.randn(3, 5), torch.tensor(1.5)
    with pytest.warns(UserWarning, match="captured with torch.export"):
        c = dccomp.compile(model, PIPE, example_inputs=(x,), example_kwargs={"scale": scale})
    assert c.ir.capture == "export"
    assert str(c.ir).startswith("ir KwArgs capture=export {")
    _check_all_compressed(model, c, {"fc.weight": "linear", "out.weight": "linear"})
    _check_outputs_and_file(model, c, (x,), {"scale": scale}, tmp_path)


def test_kwargs_forward_is_not_reported_as_control_flow():
    with pytest.raises(TracingError) as e:
        dccomp.trace(KwArgs(), capture="fx")
    msg = str(e.value)
    assert "**kwargs" in msg and "capture='export'" in msg and "control flow" not in msg
    with pytest.raises(TracingError) as e:
        dccomp.trace(ForwardsKwargs(), capture="fx")
    msg = str(e.value)
    assert "iteration over a traced value" in msg and "data-dependent control flow" not in msg


def test_auto_without_example_inputs_says_export_needs_them():
    with pytest.raises(TracingError, match="falls back to torch.export, which needs example inputs"):
        dccomp.trace(KwArgs())
    with pytest.raises(TracingError, match="torch.export needs example inputs"):
        dccomp.trace(EmbLinear(), capture="export")
    with pytest.raises(ValueError, match="capture must be one of auto, fx, export"):
        dccomp.trace(EmbLinear(), capture="dynamo")
    with pytest.raises(ValueError, match="torch.fx tracing only"):
        dccomp.trace(EmbLinear(), torch.zeros(1, 3, dtype=torch.long), capture="export", leaf_modules=[nn.Embedding])


def test_export_dynamic_sequence_length(tmp_path):
    model = _seed_model(SeqPool)
    ids, mask = torch.randint(0, 50, (2, 9)), torch.ones(2, 9, dtype=torch.bool)
    mask[0, 6:] = False
    with pytest.raises(TracingError, match="data-dependent control flow"):
        dccomp.trace(model, capture="fx")
    seq = torch.export.Dim("seq", min=2, max=64)
    with pytest.warns(UserWarning, match="captured with torch.export"):
        c = dccomp.compile(model, PIPE, example_inputs=(ids, mask), dynamic_shapes=({1: seq}, {1: seq}))
    _check_all_compressed(model, c, {"emb.weight": "embedding", "attn.in_proj_weight": "linear",
                                     "attn.out_proj.weight": "linear", "fc.weight": "linear"})
    assert "f32[2,9]" not in str(c.ir) and "[2,s" in str(c.ir)  # the sequence length stays symbolic
    for n in (3, 17):  # other lengths than the example's
        ids2, mask2 = torch.randint(0, 50, (2, n)), torch.ones(2, n, dtype=torch.bool)
        _check_outputs_and_file(model, c, (ids2, mask2), {}, tmp_path)


def _retrain_keeps_masks(model, x, y, capture):
    batch = torch.export.Dim("batch", min=1, max=64)
    c = dccomp.compile(model, "prune{sparsity=0.5},retrain{epochs=2,lr=0.05}", example_inputs=(x[:4],),
                       capture=capture, dynamic_shapes=({0: batch},), train_data=(x, y), loss=nn.CrossEntropyLoss(),
                       trainer=None, verify=True)
    assert c.ir.capture == capture
    moved = 0
    for w in c.ir:
        p = c.ir.param(w.name).detach()
        assert torch.equal(p != 0, w.mask), w.name  # pruned entries exactly 0, survivors non-zero
        moved += int(not torch.equal(p[w.mask], model.get_parameter(w.name).detach()[w.mask]))
    assert moved == len(c.ir.weights)  # every weight was trained
    torch.testing.assert_close(c(x), c.ir.gm(x))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_retrain_keeps_masks_lstm_and_mha(capture):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, 6, generator=g), torch.randint(0, 2, (40,), generator=g)
    _retrain_keeps_masks(_seed_model(Recurrent, nn.LSTM).train(), x, y, capture)
    x, y = torch.randn(40, 5, 16, generator=g), torch.randint(0, 3, (40,), generator=g)
    _retrain_keeps_masks(_seed_model(MHA).train(), x, y, capture)


def test_depthwise_and_grouped_kinds_are_separately_selectable():
    model = _seed_model(MobileBlock)
    x = torch.randn(1, 8, 6, 6)
    c = dccomp.compile(model, 'prune{sparsity=0.5,layers={"conv2d.depthwise":0.25,"conv2d.grouped":0.75}},'
                              'cluster{bits=3,exclude="conv2d"}', example_inputs=x)
    density = {w.name: float(w.mask.float().mean()) for w in c.ir}
    assert density == {"dw.weight": 0.75, "gc.weight": 0.25, "pw.weight": 0.5}
    assert {w.name for w in c.ir if w.state == State.CLUSTERED} == {"dw.weight", "gc.weight"}
    assert "excluded from cluster" in c.ir.skipped["pw.weight"]
    c = dccomp.compile(model, 'prune{sparsity=0.5,exclude="conv2d.*"}', example_inputs=x)  # all three
    assert all(w.state == State.DENSE for w in c.ir)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_conv_kind_follows_groups(groups, in_per_group, out_per_group):
    conv = nn.Conv2d(groups * in_per_group, groups * out_per_group, 1, groups=groups)
    ir = dccomp.trace(nn.Sequential(conv))
    w = ir.weights["0.weight"]
    want = "conv2d" if groups == 1 else ("conv2d.depthwise" if in_per_group == 1 else "conv2d.grouped")
    assert w.kind == want and w.groups == groups


def test_export_capture_leaves_user_model_untouched():
    model = _seed_model(KwArgs).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dccomp.compile(model, PIPE, example_inputs=(torch.randn(2, 5),), capture="export")
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_export_capture_runs_at_other_batch_sizes():
    """A model captured with torch.export from a batch of 1 runs at batch 4 (found by a new user: the export
    guard 'x.size()[0] == 1' failed)."""
    class L(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(20, 16, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    model = _seed_model(L).eval()
    c = dccomp.compile(model, "prune{sparsity=0.5}", example_inputs=torch.randn(1, 5, 20), capture="export")
    x4 = torch.randn(4, 5, 20)
    ref = c.ir.gm(x4)
    assert ref.shape == (4, 3) and torch.equal(c(x4), ref)
