"""``dccomp plot``: one PNG per compressed layer plus a summary, from the .dcc file alone; bad inputs and the
output folder's rules (atomic writes, only PNG or empty regular files replaced)."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

import dccomp
from dccomp.cli import main
from dccomp.models import LeNet300100
from dccomp.plot import LayerPlotData, draw_layer, layer_data, plot_file

PNG = b"\x89PNG\r\n\x1a\n"
EXPECTED = ["fc1.weight.png", "fc2.weight.png", "fc3.weight.png", "summary.png"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A compressed file (fc3 clustered but not pruned) and the dense baseline as a .dcc file."""
    folder = tmp_path_factory.mktemp("plot")
    torch.manual_seed(0)
    model = LeNet300100()
    ex = torch.zeros(1, 1, 28, 28)
    dccomp.compile(model, "prune{sparsity=0.9,exclude=fc3},cluster{bits=4},huffman", example_inputs=ex).save(
        folder / "m.dcc")
    dccomp.compile(model, "", example_inputs=ex).save(folder / "dense.dcc")
    return folder / "m.dcc", folder / "dense.dcc"


def test_cli_writes_one_png_per_layer_and_a_summary(files, tmp_path, capsys):
    path, dense = files
    out = tmp_path / "plots"
    main(["plot", str(path), "--out", str(out), "--dense", str(dense)])
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / n) for n in EXPECTED]
    assert sorted(os.listdir(out)) == sorted(EXPECTED)  # no temporary file left behind
    for name in EXPECTED:
        w, h = _png_size((out / name).read_bytes())
        assert w >= 1000 and h >= 400 and (out / name).stat().st_size > 20_000, name


def test_layer_data_matches_the_file(files):
    path, dense = files
    layers = {d.name: d for d in layer_data(path, dense)}
    f = dccomp.load(path)
    for name, d in layers.items():
        values, mask, codebook, indices = f.decode(name)
        assert d.values.size == (int(mask.sum()) if mask is not None else values.numel())
        np.testing.assert_array_equal(d.values, codebook.numpy()[d.indices])  # 1-D codebook: global index
        assert d.dense is not None and d.dense.shape == tuple(values.shape)
    assert layers["fc3.weight"].gaps is None and layers["fc1.weight"].gaps is not None
    # the gap stream walks exactly the surviving positions (fillers = 0 advance 2**b - 1)
    d = layers["fc1.weight"]
    step = np.where(d.gaps == 0, (1 << d.index_bits) - 1, d.gaps.astype(np.int64))
    pos = np.cumsum(step)[d.gaps != 0] - 1
    np.testing.assert_array_equal(pos, np.flatnonzero(f.decode("fc1.weight")[1].reshape(-1).numpy()))


def test_per_channel_codebook_figure():
    rng = np.random.default_rng(0)
    g, k, shape = 8, 6, (16, 3, 3, 3)
    cb = np.sort(rng.normal(0, 0.1, (g, k)).astype(np.float32), axis=1)
    idx = rng.integers(0, k, int(np.prod(shape)))
    rows = np.arange(idx.size) // (idx.size // g)  # row g serves dim-0 slices [2g, 2g+2)
    png = draw_layer(LayerPlotData("conv.weight", "conv2d", shape, cb[rows, idx], cb, idx))
    w, h = _png_size(png)
    assert w > _png_size(draw_layer(LayerPlotData("conv.weight", "conv2d", shape, cb[rows, idx], cb[0], idx)))[0]


def test_non_dcc_input_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "notes.dcc"
    bad.write_text("not a model file")
    for args in (["plot", str(bad), "--out", str(tmp_path / "o")],
                 ["plot", str(tmp_path / "missing.dcc"), "--out", str(tmp_path / "o")]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "not a .dcc file" in err or "magic" in err
    assert "missing.dcc" in err
    assert not (tmp_path / "o").exists()


def test_out_folder_rules(files, tmp_path):
    path, _ = files
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        plot_file(path, f)
    with pytest.raises(FileNotFoundError):
        plot_file(path, tmp_path / "no" / "such")
    out = tmp_path / "out"
    out.mkdir()
    (out / "fc2.weight.png").mkdir()  # a folder where a PNG would go: never replaced, nothing written
    with pytest.raises(FileExistsError, match="not a regular file"):
        plot_file(path, out)
    assert os.listdir(out) == ["fc2.weight.png"]
    os.rmdir(out / "fc2.weight.png")
    os.symlink(f, out / "fc2.weight.png")  # a link is not replaced either (nor its target)
    with pytest.raises(FileExistsError):
        plot_file(path, out)
    assert f.read_text() == "x"
    os.unlink(out / "fc2.weight.png")
    (out / "summary.png").write_text("my notes")  # a regular file that is not a PNG
    with pytest.raises(FileExistsError, match="not a PNG"):
        plot_file(path, out)
    (out / "summary.png").write_bytes(b"")  # empty: replaced
    (out / "fc1.weight.png").write_bytes(PNG + b"old")  # an older PNG: replaced
    written = plot_file(path, out)
    assert [p.name for p in written] == EXPECTED
    assert sorted(os.listdir(out)) == sorted(EXPECTED)
    assert (out / "fc1.weight.png").stat().st_size > 20_000


def test_missing_matplotlib_says_how_to_install(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("dccomp.plot.available", lambda: False)
    with pytest.raises(SystemExit) as e:
        main(["plot", str(files[0]), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "pip install 'dccomp[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dense_baseline_of_another_model_is_refused(files, tmp_path, capsys):
    """Found by a new user: --dense of another model was accepted and the baseline silently left out."""
    path, _ = files
    other = tmp_path / "other.dcc"
    dccomp.compile(torch.nn.Sequential(torch.nn.Linear(4, 2)), "", example_inputs=torch.zeros(1, 4)).save(other)
    with pytest.raises(SystemExit) as e:
        main(["plot", str(path), "--out", str(tmp_path / "p"), "--dense", str(other)])
    assert e.value.code == 2 and "none of the file's weights" in capsys.readouterr().err
