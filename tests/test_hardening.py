"""Issue 14, a new user's trial: no clobbered files, nothing silently dropped, every bad input a clear error.

One test (or a few) per item of the issue; each failed before the fix. CLI tests call ``dccomp.cli.main``
in-process; user models are tiny MLPs so the whole file runs in seconds.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import socket
import stat
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dccomp
from dccomp.cli import main
from dccomp.errors import DccompError, StaleStateError

PIPE = "prune{sparsity=0.5},cluster{bits=3},huffman"


class Aux(nn.Module):
    """fc -> bn -> dropout -> out; ``aux`` and the buffer ``extra`` are never used by forward()."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn, self.drop, self.out = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, 4)
        self.aux = nn.Linear(3, 3)
        self.register_buffer("extra", torch.arange(4.0))

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.bn(self.fc(x)))))


def _compiled(dtype=torch.float32, pipeline=PIPE, train=False, **kw):
    torch.manual_seed(0)
    m = Aux().to(dtype).train(train)
    return m, dccomp.compile(m, pipeline, example_inputs=torch.randn(4, 8, dtype=dtype), **kw)


# -- 1. save() never replaces what it must not ---------------------------------------------------------------------
def _special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    yield fifo, "FIFO"
    sock_path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock_path))
        yield sock_path, "socket"
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        return  # not root (or no device nodes here): FIFO and socket were checked
    yield dev, "character device"


def test_save_refuses_devices_fifos_sockets_and_directories(tmp_path):
    _, c = _compiled()
    for path, kind in _special_files(tmp_path):
        mode = os.lstat(path).st_mode
        with pytest.raises(FileExistsError, match=kind):
            c.save(path)
        assert os.lstat(path).st_mode == mode, f"{kind} was replaced"
    with pytest.raises(IsADirectoryError, match="is a directory"):
        c.save(tmp_path)
    os.mkfifo(tmp_path / "p2")  # the CLI checks before any work and exits 2 with the message
    with pytest.raises(SystemExit) as e:
        main(["compress", "lenet-300-100", "--random-weights", "--input-shape", "1,28,28", "--pipeline", "prune{sparsity=0.5}",
              "--out", str(tmp_path / "p2"), "--no-progress"])
    assert e.value.code == 2 and stat.S_ISFIFO(os.lstat(tmp_path / "p2").st_mode)


def test_save_follows_a_symlink_and_replaces_its_target(tmp_path):
    _, c = _compiled()
    target = tmp_path / "real.dcc"
    c.save(target)
    link = tmp_path / "link.dcc"
    link.symlink_to(target)
    _, c2 = _compiled(pipeline="prune{sparsity=0.8},cluster{bits=2},huffman")
    n = c2.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.stat().st_size == n and dccomp.load(link).file_size == n


def test_save_replaces_dcc_and_empty_files_but_not_other_files_without_overwrite(tmp_path, capsys):
    _, c = _compiled()
    notes = tmp_path / "notes.txt"
    notes.write_text("three months of lab notes")
    with pytest.raises(FileExistsError, match="not a .dcc file.*overwrite=True"):
        c.save(notes)
    assert notes.read_text() == "three months of lab notes"
    with pytest.raises(SystemExit):
        main(["compress", "lenet-300-100", "--random-weights", "--input-shape", "1,28,28", "--pipeline",
              "prune{sparsity=0.5}", "--out", str(notes), "--no-progress"])
    assert "--force" in capsys.readouterr().err and notes.read_text() == "three months of lab notes"
    assert c.save(notes, overwrite=True) == notes.stat().st_size
    assert c.save(notes) == notes.stat().st_size  # now a .dcc file: replaced like any .dcc file
    empty = tmp_path / "empty.dcc"
    empty.touch()
    assert dccomp.save(c, empty) == empty.stat().st_size


# -- 2. the whole state dict is in the file --------------------------------------------------------------------------
def test_unused_parameters_and_buffers_are_saved_and_reported(tmp_path):
    m, c = _compiled()
    c.save(tmp_path / "m.dcc")
    r = dccomp.load(tmp_path / "m.dcc", model=Aux())  # every key of the class is there
    assert torch.equal(r.aux.weight, m.aux.weight) and torch.equal(r.extra, m.extra)
    skipped = c.report().skipped
    assert "unused" in skipped["aux.weight"] and "unused" in skipped["extra"]
    assert "aux.weight" in str(c.report())
    assert c.ir.dense_nbytes() == 4 * sum(p.numel() for p in m.parameters())


def test_non_persistent_buffers_load_back_into_the_same_class(tmp_path):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("scale", torch.full((4,), 2.0), persistent=False)

        def forward(self, x):
            return self.fc(x) * self.scale

    m = Scaled()
    m.scale.fill_(3.0)
    c = dccomp.compile(m, "prune{sparsity=0.5}", example_inputs=torch.zeros(1, 4))
    c.save(tmp_path / "m.dcc")
    r = dccomp.load(tmp_path / "m.dcc", model=Scaled())
    x = torch.randn(3, 4)
    assert torch.equal(r.scale, m.scale) and torch.equal(r(x), c.eval()(x))


# -- 3. changing a compiled model's parameters outside dccomp ----------------------------------------------------------
def test_finetuning_outside_dccomp_is_refused_at_save_and_report(tmp_path):
    _, c = _compiled()
    opt = torch.optim.SGD(c.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        c(torch.randn(8, 8)).square().sum().backward()
        opt.step()
    with pytest.raises(StaleStateError, match="fc.weight.*restore_compressed") as e:
        c.save(tmp_path / "m.dcc")
    assert {"fc.weight", "out.weight"} <= set(e.value.layers)
    assert not (tmp_path / "m.dcc").exists()
    with pytest.raises(StaleStateError):
        c.report()
    c.restore_compressed()
    c.save(tmp_path / "m.dcc")
    x = torch.randn(5, 8)
    assert torch.equal(dccomp.load(tmp_path / "m.dcc", model=Aux())(x), c.eval()(x))


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(["fc.weight", "fc.bias", "bn.running_mean", "out.weight", "out.bias"]),
       st.integers(0, 15), st.sampled_from([0.0, 0.5, "centroid"]))
def test_a_saved_file_always_computes_what_the_model_in_memory_computes(tmp_path_factory, name, pos, value):
    """Property: after any in-place edit, save() either raises StaleStateError or writes the model in memory."""
    _, c = _compiled()
    t = c.lowered.state_dict(keep_vars=True)[name]
    flat = t.detach().view(-1)
    i = pos % flat.numel()
    w = c.ir.weights.get(name)
    with torch.no_grad():
        flat[i] = w.codebook[-1] if value == "centroid" and w is not None else (0.25 if value == "centroid" else value)
    path = tmp_path_factory.mktemp("p") / "m.dcc"
    try:
        c.save(path)
    except StaleStateError as e:
        assert name in e.layers and w is not None
        return
    x = torch.randn(6, 8)
    assert torch.equal(dccomp.load(path, model=Aux())(x), c.eval()(x))


# -- 4. bfloat16 and float16 models ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("pipeline", ["", PIPE])
def test_half_precision_models_save_report_and_load_in_their_dtype(tmp_path, dtype, pipeline):
    m, c = _compiled(dtype, pipeline, verify=True)
    n = c.save(tmp_path / "m.dcc")
    assert c.report().total_bytes == n
    r = dccomp.load(tmp_path / "m.dcc", model=Aux().to(dtype))
    for k, v in r.state_dict().items():
        assert v.dtype == m.state_dict()[k].dtype, k
    x = torch.randn(5, 8, dtype=dtype)
    assert torch.equal(r(x), c.eval()(x))
    assert dccomp.load(tmp_path / "m.dcc").tensor("bn.weight").dtype == dtype


def test_float64_model_is_refused_not_rounded(tmp_path):
    _, c = _compiled(torch.float64)
    with pytest.raises(TypeError, match=r"float64.*model\.float\(\)"):
        c.save(tmp_path / "m.dcc")
    assert not (tmp_path / "m.dcc").exists()


# -- 5. training mode is kept, and tracing leaves batch-norm statistics alone ---------------------------------------
def test_compiled_model_keeps_the_users_mode_and_buffers():
    m, c = _compiled(train=True)
    assert c.training and all(mod.training for mod in c.lowered.modules())
    assert torch.equal(c.lowered.bn.running_mean, m.bn.running_mean)  # tracing ran forward, stats untouched
    assert int(c.lowered.bn.num_batches_tracked) == 0
    m.eval()
    c.eval()
    x = torch.randn(5, 8)
    _, ce = _compiled(pipeline="")
    assert not ce.training and not ce.lowered.training
    assert torch.equal(ce(x), m(x))


# -- 6. wrong train_data says what was expected ------------------------------------------------------------------------
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("data, exc, msg", [
    ((torch.zeros(10, 8), torch.zeros(9, dtype=torch.long)), ValueError, r"same first dimension.*\(10, 8\).*\(9,\)"),
    ("data/train", TypeError, "got a str .*get_dataset"),
    ({"x": [[0.0] * 8] * 4}, TypeError, "got a dict .*every value is a tensor"),
    ([torch.zeros(4, 8)] * 3, TypeError, "list of 3 tensors; expected \\(inputs, targets\\)"),
    (torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 8))), DccompError,
     r"no labels .*inputs only.*retrain\{distill=1\}"),
])
def test_bad_train_data_says_what_was_expected(data, exc, msg):
    with pytest.raises(exc, match=msg):
        dccomp.compile(Small(), "prune{sparsity=0.5},retrain{epochs=1}", example_inputs=torch.zeros(1, 8),
                       train_data=data)


# -- CLI ----------------------------------------------------------------------------------------------------------------
NET = ("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
       "        self.a = torch.nn.Linear(16, 32); self.b = torch.nn.Linear(32, 4)\n"
       "    def forward(self, x):\n        return self.b(torch.relu(self.a(x.flatten(1))))\n")


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """``mymodel:Net`` (16 inputs, not 28x28) importable from the cwd, its weights ``w.pt`` and a compressed
    file of it."""
    (tmp_path / "mymodel.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mymodel", raising=False)
    torch.manual_seed(0)
    net = importlib.import_module("mymodel").Net()
    torch.save(net.state_dict(), "w.pt")
    dccomp.compile(net, PIPE, example_inputs=torch.zeros(1, 16)).save("net.dcc")
    return tmp_path / "net.dcc"


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    return err


def test_eval_and_build_on_a_model_that_is_not_28x28(user_model, tmp_path, capsys):
    err = _fails(["eval", str(user_model), "--model", "mymodel:Net", "--data", "digits"], capsys)
    assert "does not accept inputs of shape (1, 8, 8)" in err and "mat1 and mat2" in err
    err = _fails(["build", str(user_model), "--model", "mymodel:Net", "--out", "b"], capsys)
    assert "(1, 28, 28)" in err and "--input-shape" in err
    pytest.importorskip("tvm")
    main(["build", str(user_model), "--model", "mymodel:Net", "--input-shape", "16", "--out", str(tmp_path / "b")])
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["Net.json", "Net.so"]


def test_compress_refuses_random_weights_unless_asked_and_names_mismatched_keys(user_model, tmp_path, capsys):
    base = ["compress", "mymodel:Net", "--input-shape", "16", "--pipeline", PIPE, "--out", "x.dcc", "--no-progress"]
    assert "no --weights given" in _fails(base, capsys)
    assert not (tmp_path / "x.dcc").exists()
    torch.save({"a.weight": torch.zeros(32, 16), "a.bias": torch.zeros(32), "b.weight": torch.zeros(4, 30),
                "head.bias": torch.zeros(4)}, tmp_path / "bad.pt")
    err = _fails(base + ["--weights", "bad.pt"], capsys)
    assert "missing from the file: b.bias" in err and "not in the model: head.bias" in err
    assert "b.weight (file (4, 30), model (4, 32))" in err
    torch.save({**torch.load(tmp_path / "w.pt"), "epoch": 3}, tmp_path / "ckpt.pt")
    assert "not tensors (epoch)" in _fails(base + ["--weights", "ckpt.pt"], capsys)


def test_demo_validates_the_pipeline_before_training(tmp_path, monkeypatch, capsys):
    def trained(*a, **k):
        raise AssertionError("the dense baseline was trained before the pipeline was checked")

    monkeypatch.setattr("dccomp.demo.dense_baseline", trained)
    for bad, msg in [("prune{sparsity=0.5", "expected"), ("prune{sparsity=2}", "sparsity must be"),
                     ("prune{sparsity=0.5},clusterr", "clusterr")]:
        err = _fails(["demo", "--data", "digits", "--pipeline", bad, "--out", str(tmp_path / "d.dcc"),
                      "--no-progress"], capsys)
        assert msg in err
    with pytest.raises(dccomp.errors.PipelineSyntaxError):
        dccomp.demo.run_demo(data="digits", pipeline="prune{", out=tmp_path / "d.dcc", progress=False)


def test_cli_retrain_without_data_speaks_cli(user_model, capsys):
    err = _fails(["compress", "mymodel:Net", "--weights", "w.pt", "--input-shape", "16", "--pipeline",
                  "prune{sparsity=0.5},retrain{epochs=1}", "--out", "y.dcc"], capsys)
    assert "needs training data: add --data" in err and "train_data=" not in err
    err = _fails(["compress", "mymodel:Net", "--weights", "w.pt", "--input-shape", "16", "--pipeline",
                  "prune{sparsity=0.5,steps=2,epochs=1}", "--out", "y.dcc"], capsys)
    assert "needs training data" in err


def test_compress_reports_accuracies_ratio_and_time(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["compress", "lenet-300-100", "--random-weights", "--data", "digits", "--pipeline", PIPE, "--out", "l.dcc",
          "--no-progress", "--json", "r.json"])
    r = json.loads((tmp_path / "r.json").read_text())
    assert 0 <= r["dense_accuracy"] <= 1 and r["reloaded_accuracy"] == r["compressed_accuracy"]
    assert r["file_bytes"] == (tmp_path / "l.dcc").stat().st_size == r["report"]["total_bytes"]
    assert r["ratio"] == pytest.approx(r["dense_fp32_bytes"] / r["file_bytes"]) and r["seconds"] > 0
    assert [s[0] for s in r["stages"][1:]] == ["prune#1", "cluster#2", "huffman#3"]
    out = capsys.readouterr().out
    assert "dense accuracy" in out and "reloaded accuracy" in out and "reload accuracy identical" in out


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_option_and_default(restore_threads, monkeypatch, capsys):
    main(["passes", "--threads", "3"])
    assert torch.get_num_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    main(["passes"])
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    main(["passes"])  # an explicit environment setting is respected
    assert torch.get_num_threads() == 2
    main(["passes", "--threads", "0"])  # 0: torch's own choice, left as it is
    assert torch.get_num_threads() == 2
    _fails(["passes", "--threads", "-1"], capsys)


@pytest.mark.parametrize("data,msg", [
    ((torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)), "train_data is empty"),
    ((torch.randn(8, 1, 28, 28), torch.rand(8)), "targets are float32.*class indices"),
    ((torch.randn(8, 1, 28, 28), torch.full((8,), 42)), "target 42 is outside the model's 10 output classes"),
    ((torch.randn(8, 3, 32, 32), torch.zeros(8, dtype=torch.long)), r"training batch of shape \[8, 3, 32, 32\]"),
])
def test_bad_training_data_is_named_before_torch_fails(data, msg):
    """Found by a second new-user trial: empty data, float or out-of-range labels, and inputs of the wrong shape
    reached torch and failed with its internal messages."""
    from dccomp.errors import DccompError
    from dccomp.models import LeNet300100

    with pytest.raises((ValueError, DccompError), match=msg):
        dccomp.compile(LeNet300100(), "prune{sparsity=0.5},retrain{epochs=1}",
                       example_inputs=torch.zeros(1, 1, 28, 28), train_data=data)


def test_json_never_replaces_inputs_outputs_or_foreign_files(tmp_path, capsys):
    """Found by a new user: --json x.dcc replaced the compressed output (and --json w.pt the weights)."""
    import json as _json

    from dccomp.cli import main

    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(Small().state_dict(), weights)
    out = tmp_path / "x.dcc"
    base = ["compress", "test_hardening:Small", "--weights", str(weights), "--input-shape", "8",
            "--pipeline", "cluster{bits=4}", "--out", str(out)]
    for target in (out, weights):
        before = target.read_bytes() if target.exists() else None
        with pytest.raises(SystemExit) as e:
            main(base + ["--json", str(target)])
        assert e.value.code == 2 and "write the JSON elsewhere" in capsys.readouterr().err
        assert (target.read_bytes() if target.exists() else None) == before
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(SystemExit):
        main(base + ["--json", str(notes)])
    assert notes.read_text() == "keep me" and "not a .json file" in capsys.readouterr().err
    main(base + ["--json", str(tmp_path / "r.json")])
    assert "ratio" in _json.loads((tmp_path / "r.json").read_text())
    with pytest.raises(SystemExit):
        main(["inspect", str(out), "--json", str(out)])
    assert out.read_bytes()[:4] != b"{\n  " and "write the JSON elsewhere" in capsys.readouterr().err


def test_cli_input_and_option_errors_say_what_to_do(tmp_path, capsys):
    from dccomp.cli import main

    with pytest.raises(SystemExit) as e:
        main(["inspect", str(tmp_path / "missing.dcc")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(SystemExit):
        main(["demo", "--dump-ir", str(tmp_path / "f.txt"), "--data", "digits"])
    assert "takes a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compress", "lenet-300-100", "--random-weights", "--input-shape", "1,28,28", "--pipeline",
              "retrain{freeze_bn=1}", "--out", str(tmp_path / "o.dcc")])
    assert "true or false" in capsys.readouterr().err


def test_nan_weight_is_named_by_cluster():
    m = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    with pytest.raises(dccomp.PassError, match=r"'0.weight' holds NaN"):
        dccomp.compile(m, "cluster{bits=2}", example_inputs=torch.randn(1, 4))


@pytest.mark.parametrize("text, msg", [
    ("cluster{bits=4,group_size=2}", "group_size=2 applies to per-channel codebooks only"),
    ("ans{coder=huffman}", "ans codes with ans"),
    ("huffman{coder=ans}", "huffman codes with huffman"),
])
def test_contradicting_options_are_refused(text, msg):
    """Found by a new user: these were silently ignored (per-tensor codebooks; the other coder)."""
    from dccomp.pipeline import parse_pipeline

    with pytest.raises(Exception, match=re.escape(msg)):
        parse_pipeline(text)
