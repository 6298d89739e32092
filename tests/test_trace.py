"""Tracing: what becomes a compressible weight, and clear errors where torch.fx cannot be trusted."""
import pytest
import torch
from torch import nn

import dccomp
from dccomp import TracingError
from dccomp.models import LeNet5


class ShapeAssert(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        assert x.shape[1] == 4, "bad width"
        return self.fc(x)


class TensorIf(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, flag):
        if flag.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class Gate(nn.Module):
    def forward(self, x):
        if x.mean() > 0:
            return x
        return x * 0


class UsesGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x):
        return self.gate(self.fc(x))


def test_shape_assert_names_construct_and_workarounds():
    with pytest.raises(TracingError) as e:
        dccomp.trace(ShapeAssert())
    msg = str(e.value)
    assert "data-dependent control flow" in msg and "test_trace.py" in msg
    assert "concrete_args" in msg and "leaf_modules" in msg


class FlagIf(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x, negate):
        return -self.fc(x) if negate else self.fc(x)


def test_tensor_if_is_a_clear_error():
    with pytest.raises(TracingError, match="if/while/assert"):
        dccomp.trace(TensorIf())


def test_flag_if_fixed_by_concrete_args():
    with pytest.raises(TracingError, match="concrete_args"):
        dccomp.trace(FlagIf())
    ir = dccomp.trace(FlagIf(), concrete_args={"negate": True})
    x = torch.randn(3, 4)
    m = FlagIf()
    m.load_state_dict(ir.gm.state_dict())
    assert torch.equal(ir.gm(x, True), m(x, True))


def test_leaf_module_by_class():
    ir = dccomp.trace(UsesGate(), leaf_modules=[Gate])
    assert "fc.weight" in ir.weights and any(op.target == "gate" for op in ir.ops)


def test_leaf_module_by_name():
    ir = dccomp.trace(UsesGate(), leaf_modules=["gate"])
    assert any(op.opcode == "call_module" and op.target == "gate" for op in ir.ops)


def test_forward_hook_refused():
    m = LeNet5()
    m.conv1.register_forward_hook(lambda mod, i, o: o * 2)
    with pytest.raises(TracingError, match="conv1.*forward_hooks.*silently drop"):
        dccomp.compile(m, "prune{sparsity=0.5}")


def test_forward_pre_hook_refused():
    m = LeNet5()
    m.register_forward_pre_hook(lambda mod, i: i)
    with pytest.raises(TracingError, match="forward_pre_hooks"):
        dccomp.trace(m)


def test_parametrization_refused():
    m = nn.Sequential(nn.Linear(4, 4))
    torch.nn.utils.parametrizations.weight_norm(m[0])
    with pytest.raises(TracingError, match="parametrizations.*remove_parametrizations"):
        dccomp.trace(m)


def test_bad_example_inputs_is_a_clear_error():
    with pytest.raises(TracingError, match="example_inputs of shape \\[1, 3\\] failed: .*--input-shape"):
        dccomp.trace(LeNet5(), torch.zeros(1, 3))


def test_not_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        dccomp.trace(lambda x: x)


def test_layer_kinds_and_dense_reasons():
    class Many(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(3, 4, 3)
            self.c3 = nn.Conv3d(3, 4, 1)
            self.dw = nn.Conv2d(8, 8, 3, groups=8)
            self.ct = nn.ConvTranspose2d(8, 4, 2)
            self.emb = nn.Embedding(10, 4)
            self.bn = nn.BatchNorm2d(8)
            self.w = nn.Parameter(torch.randn(5, 4))

        def forward(self, a, b, c, ids):
            y = self.ct(self.dw(self.bn(c)))
            return self.c1(a).sum() + self.c3(b).sum() + y.sum() + torch.nn.functional.linear(self.emb(ids), self.w).sum()

    ir = dccomp.trace(Many())
    kinds = {n: w.kind for n, w in ir.weights.items()}
    assert kinds == {"c1.weight": "conv1d", "c3.weight": "conv3d", "dw.weight": "conv2d.depthwise",
                     "ct.weight": "conv_transpose2d", "emb.weight": "embedding", "w": "linear"}
    assert ir.weights["dw.weight"].groups == 8
    reasons = {d.name: d.reason for d in ir.dense}
    assert reasons["bn.weight"] == "normalization" and reasons["c1.bias"] == "bias"


def test_compile_leaves_user_model_untouched_on_failure():
    m = LeNet5()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(dccomp.PassError, match="retrain.*train_data"):
        dccomp.compile(m, "prune{sparsity=0.9},retrain")
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
