"""Golden tests of the IR's stable text form (LeNet-300-100 and the paper's Caffe LeNet-5)."""
import os
from pathlib import Path

import pytest
import torch

import dccomp
from dccomp.models import LeNet5, LeNet300100

GOLDEN = Path(__file__).parent / "golden"
X = torch.zeros(1, 1, 28, 28)
CASES = {
    "lenet300100_dense": (LeNet300100, ""),
    "lenet300100_pruned": (LeNet300100, 'prune{sparsity=0.9,layers={"fc3":0.5}}'),
    "lenet300100_coded": (LeNet300100, "prune{sparsity=0.9},cluster{bits=5},huffman"),
    "lenet5_dense": (LeNet5, ""),
    "lenet5_pruned": (LeNet5, 'prune{sparsity=0.9,layers={"conv1":0.5}}'),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_text(name):
    cls, pipeline = CASES[name]
    torch.manual_seed(0)
    ir = dccomp.compile(cls(), pipeline, example_inputs=X, verify=True).ir
    text = str(ir) + "\n"
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("DCCOMP_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"IR text changed; if intended, rerun with DCCOMP_UPDATE_GOLDEN=1\n{text}"


def test_text_is_one_op_a_line_and_stable():
    ir = dccomp.trace(LeNet5(), X)
    lines = str(ir).splitlines()
    assert lines[0] == "ir LeNet5 {" and lines[-1] == "}"
    assert sum(" = " in ln for ln in lines) == len([o for o in ir.ops if o.opcode != "output"])
    assert str(ir) == str(ir.clone())


def test_tied_weight_shown_once_and_listed_once():
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.out = torch.nn.Linear(16, 50, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, x):
            return self.out(self.emb(x))

    ir = dccomp.trace(Tied(), torch.zeros(2, 3, dtype=torch.long))
    assert list(ir.weights) == ["emb.weight"]
    assert ir.weights["emb.weight"].users == ["emb", "out"]
    assert "tied=2" in str(ir) and "(tied, see above)" in str(ir)
