"""The dccomp command line: the demo end to end on the small digits data, inspect/eval/compress, bad input."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import dccomp
from dccomp.cli import main
from dccomp.models import LeNet300100


@pytest.fixture
def dcc_file(tmp_path):
    torch.manual_seed(0)
    c = dccomp.compile(LeNet300100(), "prune{sparsity=0.9},cluster{bits=5},huffman",
                       example_inputs=torch.zeros(1, 1, 28, 28))
    path = tmp_path / "m.dcc"
    c.save(path)
    return path, c


def test_demo_on_digits_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DCCOMP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "digits.dcc"
    main(["demo", "--data", "digits", "--out", str(out), "--no-progress", "--json", str(tmp_path / "r.json")])
    r = json.loads((tmp_path / "r.json").read_text())
    assert out.stat().st_size == r["file_bytes"] == r["report"]["total_bytes"]
    assert r["reloaded_accuracy"] == r["compressed_accuracy"]
    assert r["dense_accuracy"] > 0.85 and r["compressed_accuracy"] > 0.8
    assert r["ratio"] > 10
    # second run uses the cached dense baseline
    main(["demo", "--data", "digits", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert "cached baseline" in text and "reload accuracy identical" in text and "P+Q+H" in text
    if importlib.util.find_spec("matplotlib") is not None:  # the demo lists the PNGs it drew beside its file
        pngs = sorted((tmp_path / "digits-plots").iterdir())
        assert [p.name for p in pngs] == ["fc1.weight.png", "fc2.weight.png", "fc3.weight.png", "summary.png"]
        assert all(str(p) in text for p in pngs) and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    main(["demo", "--data", "digits", "--out", str(out), "--no-progress", "--no-plots"])
    assert "PNG" not in capsys.readouterr().out


def test_inspect_text_and_json(dcc_file, capsys):
    path, c = dcc_file
    main(["inspect", str(path)])
    out = capsys.readouterr().out
    assert "fc1.weight linear f32[300,784] density=0.1000" in out and "huffman" in out
    assert f"{path.stat().st_size}" in out
    main(["inspect", str(path), "--json", "-"])
    d = json.loads(capsys.readouterr().out)
    assert d["report"]["total_bytes"] == path.stat().st_size == c.report().total_bytes


def test_compress_user_model_from_module_class(tmp_path):
    (tmp_path / "mymodel.py").write_text(
        "import torch\nclass Net(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__(); self.a = torch.nn.Linear(16, 32); self.b = torch.nn.Linear(32, 4)\n"
        "    def forward(self, x):\n        return self.b(torch.relu(self.a(x)))\n")
    torch.save({"a.weight": torch.randn(32, 16), "a.bias": torch.zeros(32), "b.weight": torch.randn(4, 32),
                "b.bias": torch.zeros(4)}, tmp_path / "w.pt")
    r = subprocess.run([sys.executable, "-m", "dccomp.cli", "compress", "mymodel:Net", "--weights", "w.pt",
                        "--input-shape", "16", "--pipeline", "prune{sparsity=0.5},cluster{bits=3},ans",
                        "--out", "net.dcc", "--verify", "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    f = dccomp.load(tmp_path / "net.dcc")
    assert set(f.names) == {"a.weight", "b.weight", "a.bias", "b.bias"}
    assert len(torch.unique(f.tensor("a.weight"))) <= 2 ** 3 + 1


@pytest.mark.parametrize("args, msg", [
    (["inspect", "nope.dcc"], "does not exist"),
    (["compress", "lenet-9", "--pipeline", "prune{sparsity=0.5}", "--out", "x.dcc"], "neither a built-in"),
    (["compress", "lenet-300-100", "--pipeline", "prune{sparsity=2}", "--out", "x.dcc", "--input-shape", "1,28,28"],
     "sparsity must be a number in [0, 1]"),
    (["compress", "lenet-300-100", "--pipeline", "prune{sparsity=0.5", "--out", "x.dcc"], "expected"),
])
def test_bad_arguments_exit_2_with_message(tmp_path, args, msg):
    r = subprocess.run([sys.executable, "-m", "dccomp.cli", *args], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_corrupt_file_exit_2(tmp_path, dcc_file):
    path, _ = dcc_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    bad = tmp_path / "bad.dcc"
    bad.write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "dccomp.cli", "inspect", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "FormatError" in r.stderr and "CRC-32 mismatch" in r.stderr


def test_missing_dataset_says_how_to_install(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dccomp.cli", "demo", "--no-progress",
                        "--data-root", str(tmp_path / "none")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "apt-get install -y dataset-fashion-mnist" in r.stderr and str(tmp_path / "none") in r.stderr


def test_passes_lists_plugins(capsys):
    main(["passes"])
    out = capsys.readouterr().out
    assert "deep-compression" in out and "prune" in out and "backends: " in out


def test_compress_dumps_ir_after_each_pass(tmp_path):
    main(["compress", "lenet-300-100", "--random-weights", "--input-shape", "1,28,28", "--pipeline",
          "prune{sparsity=0.9},cluster{bits=4},huffman", "--out", str(tmp_path / "m.dcc"),
          "--dump-ir", str(tmp_path / "ir"), "--no-progress", "--json", str(tmp_path / "r.json")])
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == ["000_input.txt", "001_prune.txt", "002_cluster.txt", "003_huffman.txt"]
    assert " dense " in (tmp_path / "ir" / "000_input.txt").read_text()
    assert " coded " in (tmp_path / "ir" / "003_huffman.txt").read_text()
