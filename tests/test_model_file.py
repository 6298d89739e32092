"""The ``.dcc`` model file (dccomp/format.py + dccomp/wcodec.py): bit-exact round trips through
compile -> save -> load (into a fresh model and through ``DccFile.decode``), edge cases (100% pruned, single
symbol, empty tensors), what the file holds (no masks, no original weights), determinism, atomic saves, and
every kind of bad input -> ``dccomp.FormatError`` (wrong architecture -> ``ValueError``)."""
from __future__ import annotations

import copy
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import dccomp
import dccomp.models
from dccomp import container as C
from dccomp.container import HEADER_SIZE, container_bytes, read_container
from dccomp.format import DccFile, file_nbytes, plan_file

HDR = struct.Struct("<8sHHIQI")
COMPILE_WARNINGS = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")


# ------------------------------------------------------------------------------------------------ helpers

def make_layer(kind: str, a: int, b: int, ks: int, bias: bool) -> nn.Module:
    if kind == "linear":
        return nn.Sequential(nn.Linear(a, b, bias=bias))
    return nn.Sequential(nn.Conv2d(a, b, ks, bias=bias))


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a float tensor, every ulp counts. Signed zeros are canonicalized (``x + 0.0``): ``prune``
    zeroes weights with ``p.mul_(mask)``, which leaves -0.0 at pruned negative weights, and a file stores no
    sign for pruned positions (they decode as +0.0); every nonzero value must match bit for bit."""
    t = (t.detach() + 0.0).contiguous()
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32 if t.element_size() == 4 else torch.int64)


def assert_bit_exact(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    if a.is_floating_point():
        assert torch.equal(bits_of(a), bits_of(b)), f"{what}: not bit-exact"
    else:
        assert torch.equal(a, b), what


def check_round_trip(c: dccomp.CompiledModel, fresh: nn.Module, path: Path) -> DccFile:
    """Save, load into ``fresh`` and into a DccFile; everything must equal the IR exactly."""
    ir = c.ir
    nbytes = dccomp.save(c, path)
    assert nbytes == os.path.getsize(path) == file_nbytes(ir)
    f = dccomp.load(path)
    assert isinstance(f, DccFile)
    for w in ir.weights.values():
        values, mask, codebook, indices = f.decode(w.name)
        p = ir.param(w.name).detach()
        assert_bit_exact(values, p.float(), w.name)
        if w.mask is None:
            assert mask is None, w.name
        else:
            assert torch.equal(mask, w.mask), w.name
        if w.codebook is None:
            assert codebook is None and indices is None, w.name
        else:
            cdt = w.coded.meta.get("codebook_dtype", "float32") if w.coded else "float32"
            assert_bit_exact(codebook, w.codebook.to(getattr(torch, cdt)).float(), w.name)
            assert codebook.numel() == w.k
            assert torch.equal(indices, w.indices), w.name
        assert_bit_exact(f.tensor(w.name), p, w.name)
    model = dccomp.load(path, fresh)
    assert model is fresh and not model.training
    own = dict(ir.gm.state_dict())
    got = model.state_dict()
    assert set(got) == set(own)
    for k in own:
        assert_bit_exact(got[k], own[k], k)
    return f


# ------------------------------------------------------------------------------------------------ round trip

layer_cfg = st.fixed_dictionaries({
    "kind": st.sampled_from(["linear", "linear", "conv2d"]),
    "a": st.integers(0, 40),
    "b": st.integers(1, 24),
    "ks": st.integers(1, 3),
    "bias": st.booleans(),
    "sparsity": st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
    "bits": st.integers(1, 8),
    "index_bits": st.integers(1, 16),
    "coder": st.sampled_from(["huffman", "ans", "fixed"]),
    "levels": st.sampled_from([0, 1, 2, 3, 1000]),  # distinct values in the weight (0: continuous)
    "codebook_dtype": st.sampled_from(["float32", "float32", "float16"]),
    "seed": st.integers(0, 2**16),
})


@COMPILE_WARNINGS
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=layer_cfg)
def test_round_trip_bit_exact(tmp_path, cfg):
    if cfg["kind"] == "conv2d":
        cfg["a"] = min(cfg["a"], 6) or 1  # conv needs >= 1 input channel to trace
    torch.manual_seed(cfg["seed"])
    model = make_layer(cfg["kind"], cfg["a"], cfg["b"], cfg["ks"], cfg["bias"])
    w = model[0].weight
    with torch.no_grad():
        if cfg["levels"]:
            g = torch.Generator().manual_seed(cfg["seed"])
            w.copy_(torch.randint(-cfg["levels"], cfg["levels"] + 1, w.shape, generator=g).float() / 7)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        for p in fresh.parameters():
            p.fill_(123.0)  # the load must overwrite everything
    pipeline = (f"prune{{sparsity={cfg['sparsity']!r}}},cluster{{bits={cfg['bits']}}},"
                f"entropy-code{{coder={cfg['coder']},index_bits={cfg['index_bits']},"
                f"codebook_dtype={cfg['codebook_dtype']}}}")
    c = dccomp.compile(model, pipeline, seed=cfg["seed"])
    wt = c.ir.weights["0.weight"]
    n = w.numel()
    # entropy coders fall back to fixed width where that is smaller (tiny layers)
    assert wt.coded is not None and wt.coded.coder in (cfg["coder"], "fixed")
    assert wt.coded.index_bits == cfg["index_bits"]
    # exact zeros of the input are never kept by prune
    assert int(wt.mask.sum()) == min(n - round(cfg["sparsity"] * n), int((w != 0).sum()))
    assert wt.k <= 2 ** cfg["bits"]
    f = check_round_trip(c, fresh, tmp_path / "m.dcc")
    e = f.info("0.weight")
    assert e["meta"]["nnz"] == int(wt.mask.sum()) and e["meta"]["n"] == n and e["meta"]["k"] == wt.k


@COMPILE_WARNINGS
@pytest.mark.parametrize("pipeline", [
    "",  # dense: stored raw
    "prune{sparsity=0.7}",  # masked only: sparse indices + raw survivors (fixed coder)
    "cluster{bits=3}",  # clustered, not entropy-coded: fixed-width codes (P+Q)
    "prune{sparsity=0.6},cluster{bits=4}",
    "prune{sparsity=0.6},cluster{bits=4},huffman",
    "prune{sparsity=0.6},cluster{bits=4},ans",
    "prune{sparsity=0.6},cluster{exclude=conv2d},huffman",  # a weight cluster skipped stays raw
])
def test_round_trip_after_any_pass(tmp_path, pipeline):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 5))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    c = dccomp.compile(model, pipeline, example_inputs=torch.randn(2, 3, 3, 3))
    check_round_trip(c, nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 5)),
                     tmp_path / "m.dcc")


@COMPILE_WARNINGS
@pytest.mark.parametrize("coder", ["huffman", "ans", "fixed"])
def test_edge_layers_round_trip(tmp_path, coder):
    """100%-pruned layer, single-symbol streams (all surviving weights equal, dense and pruned), empty tensor."""

    class Edge(nn.Module):
        def __init__(self):
            super().__init__()
            self.gone = nn.Linear(10, 7)  # 100% pruned
            self.same = nn.Linear(7, 9)  # every weight equal: k' = 1, single-symbol code stream
            self.same_sparse = nn.Linear(9, 6)  # equal survivors after pruning
            self.empty = nn.Linear(0, 3)  # zero-size weight
            self.one = nn.Linear(1, 1, bias=False)  # a single weight

        def forward(self, x, z):
            return self.one(self.same_sparse(self.same(self.gone(x)))[:, :1]) + self.empty(z).sum()

    def build():
        torch.manual_seed(0)
        m = Edge()
        with torch.no_grad():
            m.same.weight.fill_(0.25)
            m.same_sparse.weight.copy_(torch.where(torch.randperm(54).reshape(6, 9) < 22, -0.01, 0.75))
        return m

    pipeline = (f"prune{{layers={{gone: 1.0, same: 0.0, same_sparse: 0.4, empty: 0.5, one: 0.0}}}},"
                f"cluster{{bits=3}},entropy-code{{coder={coder},index_bits=2}}")
    c = dccomp.compile(build(), pipeline, example_inputs=(torch.randn(2, 10), torch.randn(2, 0)))
    ws = c.ir.weights
    assert int(ws["gone.weight"].mask.sum()) == 0 and ws["gone.weight"].k == 0
    assert ws["same.weight"].k == 1 and ws["same_sparse.weight"].k == 1
    assert ws["empty.weight"].mask.numel() == 0
    f = check_round_trip(c, build(), tmp_path / "edge.dcc")
    assert f.info("gone.weight")["meta"]["nnz"] == 0
    assert torch.count_nonzero(f.tensor("gone.weight")) == 0
    if coder != "fixed":  # entropy coders spend no bits on a single-symbol stream: just the (tiny) table
        c_same = f.container.section("same.weight/codes")
        assert len(c_same) <= 8


# ------------------------------------------------------------------------------------------------ contents

def lenet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return dccomp.models.LeNet300100()


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory):
    c = dccomp.compile(lenet(), "prune{sparsity=0.9},cluster{bits=5},huffman", example_inputs=torch.randn(1, 784))
    path = tmp_path_factory.mktemp("lenet") / "lenet.dcc"
    dccomp.save(c, path)
    return c, path


def test_lenet_file_is_small_and_holds_no_masks_or_originals(lenet_file):
    c, path = lenet_file
    size = os.path.getsize(path)
    dense_weight_bytes = sum(4 * w.mask.numel() for w in c.ir.weights.values())
    assert size < dense_weight_bytes / 20  # ~37x in practice; strictly smaller by far
    cont = read_container(path)
    secs = {s.name: s.length for s in cont.sections}
    expected = {f"{w}/{s}" for w in ("fc1.weight", "fc2.weight", "fc3.weight") for s in ("gaps", "codes", "codebook")}
    assert set(secs) == expected | {"fc1.bias", "fc2.bias", "fc3.bias"}
    for w in c.ir.weights.values():
        n, nnz = w.mask.numel(), int(w.mask.sum())
        own = {k: v for k, v in secs.items() if k.startswith(w.name + "/")}
        for name, length in own.items():
            assert length < 4 * n, f"{name}: as large as the dense weight"
            assert length not in (n, (n + 7) // 8), f"{name}: has the size of a dense bool / bit mask"
        assert sum(own.values()) < 4 * nnz / 2, f"{w.name}: no better than a raw copy of its survivors"
        assert secs[f"{w.name}/codebook"] == 4 * w.k
    text = json.dumps(cont.meta)
    assert "mask" not in text
    # biases stay raw float32
    assert secs["fc1.bias"] == 4 * 300


def test_lenet_load_into_fresh_model_matches_compiled_outputs(lenet_file):
    c, path = lenet_file
    fresh = dccomp.load(path, dccomp.models.LeNet300100())
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh(x), c(x))
    dcc = dccomp.load(path)
    sd = dcc.state_dict()
    for k, v in c.ir.gm.state_dict().items():
        assert_bit_exact(sd[k], v, k)
    assert "LeNet300100" in repr(dcc) and dcc.file_size == os.path.getsize(path)
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        dcc.info("nope")


def test_same_model_and_seed_give_same_bytes(tmp_path):
    paths = []
    for i in range(2):
        c = dccomp.compile(lenet(3), "prune{sparsity=0.8},cluster{bits=4},ans", seed=5)
        paths.append(tmp_path / f"{i}.dcc")
        dccomp.save(c, paths[-1])
        dccomp.save(c, tmp_path / f"{i}b.dcc")
        assert (tmp_path / f"{i}b.dcc").read_bytes() == paths[-1].read_bytes()
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert plan_file(c.ir).to_bytes() == paths[1].read_bytes()


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch, lenet_file):
    c, good_path = lenet_file
    path = tmp_path / "model.dcc"
    old = good_path.read_bytes()
    path.write_bytes(old)
    small = dccomp.compile(nn.Sequential(nn.Linear(3, 2)), "cluster{bits=1},huffman")
    real_chunks = C._chunks

    def failing(plan):
        for i, chunk in enumerate(real_chunks(plan)):
            if i == 2:
                raise OSError(28, "No space left on device")
            yield chunk

    monkeypatch.setattr(C, "_chunks", failing)
    with pytest.raises(OSError, match="No space left"):
        dccomp.save(small, path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dcc"]  # no temp file left behind
    monkeypatch.undo()
    dccomp.load(path, dccomp.models.LeNet300100())
    n = dccomp.save(small, path)
    assert os.path.getsize(path) == n and path.read_bytes() != old


def test_save_rejects_non_models(tmp_path):
    with pytest.raises(TypeError, match="CompiledModel or IR"):
        dccomp.save(nn.Linear(2, 2), tmp_path / "x.dcc")
    assert not (tmp_path / "x.dcc").exists()


# ------------------------------------------------------------------------------------------------ bad input

def full_decode(data) -> None:
    """Read the file and decode every tensor (what load does, without an architecture)."""
    f = dccomp.load(data)
    f.state_dict()
    for name in f.names:
        f.decode(name)


def expect_format_error(data, *fragments: str) -> str:
    with pytest.raises(dccomp.FormatError) as ei:
        full_decode(data)
    msg = str(ei.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


def rebuild(data: bytes, edit_meta=None, edit_sections=None, compress: bool = True) -> bytes:
    """A consistent file (CRCs recomputed) whose manifest meta / sections were edited."""
    c = read_container(data)
    meta = copy.deepcopy(c.meta)
    sections = {n: c.section(n) for n in c.section_names}
    if edit_meta:
        edit_meta(meta)
    if edit_sections:
        edit_sections(sections)
    return container_bytes(meta, sections, compress_manifest=compress)


def entry(meta: dict, name: str) -> dict:
    return next(e for e in meta["tensors"] if e["name"] == name)


@pytest.fixture(scope="module")
def small_file():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 4))
    c = dccomp.compile(model, "prune{sparsity=0.75},cluster{bits=3},huffman")
    assert c.ir.weights["0.weight"].coded.coder == "huffman"  # big enough that Huffman beats fixed width
    return plan_file(c.ir).to_bytes()


def test_small_file_reads(small_file):
    full_decode(small_file)
    assert rebuild(small_file) == small_file  # the helper itself changes nothing
    full_decode(rebuild(small_file, compress=False))  # an uncompressed manifest reads too


def test_truncated_files(small_file):
    for cut in sorted({0, 1, 7, 8, 27, 28, 29, 40, len(small_file) // 2, len(small_file) - 8, len(small_file) - 1}):
        expect_format_error(small_file[:cut])
    expect_format_error(small_file[:-1], "truncated")
    expect_format_error(small_file + b"\0" * 8, "trailing")


def test_flipped_bits_are_detected(small_file):
    rng = np.random.default_rng(0)
    for bit in rng.choice(len(small_file) * 8, 300, replace=False):
        b = bytearray(small_file)
        b[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(dccomp.FormatError):
            full_decode(bytes(b))


def test_wrong_magic_and_newer_version(small_file, tmp_path):
    expect_format_error(b"PK\x03\x04" + small_file[4:], "not a .dcc file")
    expect_format_error(b"\x89PNG\r\n\x1a\n" + small_file[8:], "not a .dcc file")
    hdr = list(HDR.unpack_from(small_file))
    hdr[1] = 2
    newer = HDR.pack(*hdr) + small_file[HEADER_SIZE:]
    expect_format_error(newer, "upgrade dccomp")
    p = tmp_path / "newer.dcc"
    p.write_bytes(newer)
    with pytest.raises(dccomp.FormatError, match="upgrade dccomp"):
        dccomp.load(p, nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)))
    hdr = list(HDR.unpack_from(small_file))
    hdr[3] |= 0x80
    expect_format_error(HDR.pack(*hdr) + small_file[HEADER_SIZE:], "flags")


def _set(name, *path_and_value):
    *path, value = path_and_value

    def edit(meta):
        d = entry(meta, name)
        for k in path[:-1]:
            d = d[k]
        if value is _DEL:
            del d[path[-1]]
        else:
            d[path[-1]] = value(d[path[-1]]) if callable(value) else value
    return edit


_DEL = object()
W = "0.weight"


def _swap_streams(meta):
    e = entry(meta, W)
    e["streams"] = e["streams"][::-1]
    e["meta"]["gaps"], e["meta"]["codes"] = e["meta"]["codes"], e["meta"]["gaps"]


def _swap_sections(sections):
    sections[f"{W}/gaps"], sections[f"{W}/codes"] = sections[f"{W}/codes"], sections[f"{W}/gaps"]


BAD_MANIFESTS = [
    ("nnz > n", _set(W, "meta", "nnz", 10**6), "nnz"),
    ("nnz negative", _set(W, "meta", "nnz", -1), "nnz"),
    ("nnz off by one", _set(W, "meta", "nnz", lambda v: v + 1), ""),
    ("nnz off by minus one", _set(W, "meta", "nnz", lambda v: v - 1), ""),
    ("n != shape", _set(W, "meta", "n", lambda v: v + 1), "elements"),
    ("k mismatch", _set(W, "meta", "k", lambda v: v + 1), "codebook has"),
    ("k huge", _set(W, "meta", "k", 2**40), "'k'"),
    ("codes alphabet", _set(W, "meta", "codes", "k", lambda v: v + 1), "alphabet"),
    ("codes count", _set(W, "meta", "codes", "n", lambda v: v + 1), "symbols"),
    ("gaps count huge", _set(W, "meta", "gaps", "n", 10**12), "symbols"),
    ("gaps alphabet", _set(W, "meta", "gaps", "k", 16), "alphabet"),
    ("index_bits 0", _set(W, "index_bits", 0), "index_bits"),
    ("index_bits 17", _set(W, "index_bits", 17), "index_bits"),
    ("index_bits changed", _set(W, "index_bits", 4), ""),
    ("index_bits str", _set(W, "index_bits", "5"), "index_bits"),
    ("shape product huge", _set(W, "shape", [2**40, 2**40]), "limit"),
    ("shape too many dims", _set(W, "shape", [1] * 40), "shape"),
    ("shape negative", _set(W, "shape", [-16, -20]), "shape"),
    ("shape float", _set(W, "shape", [16.0, 20]), "shape"),
    ("shape missing", _set(W, "shape", _DEL), "shape"),
    ("meta missing", _set(W, "meta", _DEL), "meta"),
    ("meta not a dict", _set(W, "meta", [1, 2]), "meta"),
    ("n missing", _set(W, "meta", "n", _DEL), "'n'"),
    ("n string", _set(W, "meta", "n", "320"), "'n'"),
    ("n bool", _set(W, "meta", "nnz", True), "nnz"),
    ("codes meta missing", _set(W, "meta", "codes", _DEL), "codes"),
    ("gaps meta missing", _set(W, "meta", "gaps", _DEL), "streams"),
    ("unknown coder", _set(W, "coder", "zstd"), "unknown coder"),
    ("coder changed", _set(W, "coder", "ans"), "does not decode"),
    ("coder changed to fixed", _set(W, "coder", "fixed"), "does not decode"),
    ("coder not a string", _set(W, "coder", 3), "coder"),
    ("streams names swapped", _swap_streams, ""),
    ("stream missing from list", _set(W, "streams", ["codes"]), "streams"),
    ("stream section unknown", _set(W, "streams", ["gaps", "codes", "values"]), ""),
    ("streams not a list", _set(W, "streams", "gaps"), "streams"),
    ("codebook descr missing", _set(W, "codebook", _DEL), ""),
    ("codebook shape wrong", _set(W, "codebook", "shape", lambda s: [s[0] + 1]), "bytes"),
    ("codebook 3-D", _set(W, "codebook", "shape", lambda s: [1, 1, s[0]]), "(G, k)"),
    ("codebook int", _set(W, "codebook", "dtype", "int32"), "float"),
    ("codebook f16", _set(W, "codebook", "dtype", "float16"), ""),
    ("weight dtype weird", _set(W, "dtype", ["float32"]), "dtype"),
    ("weight dtype int", _set(W, "dtype", "int64"), "dtype"),
    ("aliases not a list", _set(W, "aliases", 5), "aliases"),
    ("alias collides", _set(W, "aliases", ["0.bias"]), "alias"),
    ("unknown role", _set(W, "role", "secret"), "role"),
    ("bias array wrong", _set("0.bias", "array", "shape", [17]), "bytes"),
    ("bias array dtype", _set("0.bias", "array", "dtype", "object"), "dtype"),
    ("bias array missing", _set("0.bias", "array", _DEL), "array"),
    ("name not a string", _set(W, "name", 7), "name"),
    ("tensors not a list", lambda m: m.__setitem__("tensors", {}), "tensors"),
    ("tensor not an object", lambda m: m["tensors"].append(3), ""),
    ("duplicate tensor", lambda m: m["tensors"].append(copy.deepcopy(m["tensors"][0])), "twice"),
    ("wrong format name", lambda m: m.__setitem__("format", "onnx"), "not a dccomp model file"),
    ("no format", lambda m: m.pop("format"), "not a dccomp model file"),
]


@pytest.mark.parametrize("edit", [b[1] for b in BAD_MANIFESTS], ids=[b[0] for b in BAD_MANIFESTS])
def test_inconsistent_manifest_is_format_error(small_file, edit):
    frag = dict((id(b[1]), b[2]) for b in BAD_MANIFESTS)[id(edit)]
    bad = rebuild(small_file, edit_meta=edit)
    expect_format_error(bad, frag)
    # also through load(path, model): FormatError (or the architecture mismatch ValueError for changed shapes)
    with pytest.raises(ValueError):
        dccomp.load(bad, nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)))


BAD_SECTIONS = [
    ("streams swapped", _swap_sections),
    ("gaps truncated", lambda s: s.__setitem__(f"{W}/gaps", s[f"{W}/gaps"][:-1])),
    ("codes truncated", lambda s: s.__setitem__(f"{W}/codes", s[f"{W}/codes"][:-1])),
    ("codes extended", lambda s: s.__setitem__(f"{W}/codes", s[f"{W}/codes"] + b"\0")),
    ("gaps empty", lambda s: s.__setitem__(f"{W}/gaps", b"")),
    ("codebook short", lambda s: s.__setitem__(f"{W}/codebook", s[f"{W}/codebook"][:-4])),
    ("codebook nan", lambda s: s.__setitem__(f"{W}/codebook", b"\0\0\xc0\x7f" + s[f"{W}/codebook"][4:])),
    ("codebook inf", lambda s: s.__setitem__(f"{W}/codebook", b"\0\0\x80\x7f" + s[f"{W}/codebook"][4:])),
    ("bias short", lambda s: s.__setitem__("0.bias", s["0.bias"][:-4])),
    ("section dropped", lambda s: s.pop(f"{W}/codes")),
    ("huffman version", lambda s: s.__setitem__(f"{W}/codes", b"\x07" + s[f"{W}/codes"][1:])),
]


@pytest.mark.parametrize("edit", [b[1] for b in BAD_SECTIONS], ids=[b[0] for b in BAD_SECTIONS])
def test_inconsistent_sections_are_format_error(small_file, edit):
    expect_format_error(rebuild(small_file, edit_sections=edit))


def test_single_byte_section_edits_never_crash(small_file):
    """Every byte of the coded streams changed (CRC fixed): a FormatError or a valid decode, nothing else."""
    c = read_container(small_file)
    n_ok = n_err = 0
    for sec in (f"{W}/gaps", f"{W}/codes"):
        data = c.section(sec)
        for i in range(len(data)):
            for x in (0x01, 0x80):
                def edit(s, i=i, x=x, sec=sec):
                    b = bytearray(s[sec])
                    b[i] ^= x
                    s[sec] = bytes(b)
                try:
                    full_decode(rebuild(small_file, edit_sections=edit))
                    n_ok += 1
                except dccomp.FormatError:
                    n_err += 1
    assert n_err > 0 and n_ok + n_err > 50


def test_huge_but_consistent_shape_does_not_allocate_on_load(small_file):
    """A manifest that declares a weight of 2**33 elements (consistent counts) must not be decoded when the
    architecture says otherwise: load compares shapes first (ValueError naming the tensor)."""
    def edit(meta):
        e = entry(meta, W)
        e["shape"] = [2**33]
        e["meta"]["n"] = 2**33
    bad = rebuild(small_file, edit_meta=edit)
    with pytest.raises(ValueError, match=r"tensor '0.weight': file has shape \(8589934592,\)"):
        dccomp.load(bad, nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)))


def test_transposed_shape_is_a_valid_file_but_the_wrong_architecture(small_file):
    bad = rebuild(small_file, edit_meta=_set(W, "shape", [64, 48]))
    f = dccomp.load(bad)
    assert f.tensor(W).shape == (64, 48)
    with pytest.raises(ValueError, match=r"tensor '0.weight': file has shape \(64, 48\), model has \(48, 64\)"):
        dccomp.load(bad, nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 4)))


def test_wrong_architecture_is_value_error_naming_the_mismatch(lenet_file):
    _, path = lenet_file
    with pytest.raises(ValueError, match="missing from the file.*conv1") as ei:
        dccomp.load(path, dccomp.models.LeNet5())
    assert not isinstance(ei.value, dccomp.FormatError)
    assert "LeNet300100" in str(ei.value)
    with pytest.raises(ValueError, match=r"tensor 'fc1.weight': file has shape \(300, 784\), model has \(300, 64\)"):
        dccomp.load(path, dccomp.models.LeNet300100(in_features=64))
    m = nn.Sequential(nn.Linear(784, 300))
    before = m[0].weight.detach().clone()
    with pytest.raises(ValueError, match="do not match"):
        dccomp.load(path, m)
    assert torch.equal(m[0].weight, before)  # untouched on failure


def test_missing_file_is_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        dccomp.load(tmp_path / "nope.dcc")



def test_half_models_come_back_in_their_dtype_and_bfloat16_is_stored_in_2_bytes(tmp_path):
    """Found by a new user: a float16 file loaded into a float32 template stayed float32 (a half input then
    failed), and bfloat16 biases/BatchNorm tensors were stored widened to float32."""
    import dccomp

    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16):
        m = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Linear(32, 4)).eval().to(dtype)
        x = torch.randn(3, 64, dtype=dtype)
        c = dccomp.compile(m, "prune{sparsity=0.5},cluster{bits=4},huffman", example_inputs=x)
        path = tmp_path / f"{dtype}.dcc"
        c.save(path)
        f = dccomp.load(path)
        if dtype == torch.bfloat16:
            assert f.info("0.bias")["array"]["dtype"] == "uint16"  # the bit patterns, 2 bytes each
        r = dccomp.load(path, model=nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.Linear(32, 4)))
        assert all(p.dtype == dtype for p in r.parameters())
        assert torch.equal(r(x), c.eval()(x))
