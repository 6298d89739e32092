"""Tests of the .dcc container (dccomp/container.py): round trip, determinism, atomic writes, every validation
error, typed arrays, and a 10,000-case mutation fuzz (the longer fuzz is bench/fuzz_container.py)."""
from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dccomp import container as C
from dccomp.container import (
    ARRAY_DTYPES,
    HEADER_SIZE,
    MAGIC,
    Container,
    container_bytes,
    container_overhead,
    pack_array,
    read_container,
    unpack_array,
    write_container,
)
from dccomp.errors import DccompError, FormatError

HDR = struct.Struct("<8sHHIQI")


# ------------------------------------------------------------------------------------------------ helpers

def raw_file(manifest, data: bytes = b"", *, magic=MAGIC, major=1, minor=0, flags=0, mlen=None, crc=None,
             pad: bytes | None = None) -> bytes:
    """Assemble a file by hand (valid CRC unless overridden) to build precise bad inputs."""
    m = manifest if isinstance(manifest, bytes) else json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    if pad is None:
        pad = bytes((-(HEADER_SIZE + len(m))) % 8)
    header = HDR.pack(magic, major, minor, flags, len(m) if mlen is None else mlen,
                      zlib.crc32(m) & 0xFFFFFFFF if crc is None else crc)
    return header + m + pad + data


def manifest_of(meta=None, sections=(), version=(1, 0)) -> dict:
    """sections: list of (name, bytes) laid out canonically -> (manifest dict, data area bytes)."""
    entries, data = [], b""
    for name, payload in sections:
        data += bytes((-len(data)) % 8)
        entries.append({"name": name, "offset": len(data), "length": len(payload),
                        "crc32": zlib.crc32(payload) & 0xFFFFFFFF})
        data += payload
    return {"format": "dcc", "version": list(version), "meta": {} if meta is None else meta, "sections": entries}, data


def good() -> tuple[dict, bytes]:
    return manifest_of({"k": 1}, [("a", b"hello"), ("b", b""), ("c", bytes(range(20)))])


def expect_error(data: bytes, *fragments: str, **kw) -> FormatError:
    with pytest.raises(FormatError) as ei:
        read_container(data, **kw)
    msg = str(ei.value)
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return ei.value


# ------------------------------------------------------------------------------------------------ round trip

json_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=20)
metas = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
section_sets = st.dictionaries(st.text(min_size=1, max_size=12), st.binary(max_size=70), max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=metas, sections=section_sets)
def test_round_trip_bytes(meta, sections):
    blob = container_bytes(meta, sections)
    c = read_container(blob)
    assert c.meta == meta
    assert c.section_names == tuple(sections)
    for name, payload in sections.items():
        assert c.section(name) == payload
        assert bytes(c.section_view(name)) == payload
        assert name in c
    assert c.file_size == len(blob)
    assert c.version == (1, 0)
    assert c.overhead == container_overhead(meta, sections) == len(blob) - sum(map(len, sections.values()))
    assert container_bytes(meta, sections) == blob  # deterministic
    data_start = len(blob) - (c.sections[-1].offset + c.sections[-1].length) if sections else len(blob)
    assert data_start % 8 == 0 and all(s.offset % 8 == 0 for s in c.sections)


@settings(max_examples=30, deadline=None)
@given(meta=metas, sections=section_sets)
def test_round_trip_file(tmp_path_factory, meta, sections):
    path = tmp_path_factory.mktemp("rt") / "m.dcc"
    n = write_container(path, meta, sections)
    assert n == path.stat().st_size
    assert path.read_bytes() == container_bytes(meta, sections)
    c = read_container(path)
    assert c.meta == meta and {k: c.section(k) for k in c.section_names} == sections
    assert read_container(str(path)).file_size == n


def test_zero_sections_and_empty_meta():
    blob = container_bytes({}, {})
    c = read_container(blob)
    assert c.meta == {} and c.section_names == () and c.file_size == len(blob) and len(blob) % 8 == 0


def test_manifest_is_sorted_compact_json():
    blob = container_bytes({"z": 1, "a": [1, 2]}, {"s": b"xy"})
    mlen = HDR.unpack_from(blob)[4]
    assert blob[HEADER_SIZE : HEADER_SIZE + mlen] == (
        b'{"format":"dcc","meta":{"a":[1,2],"z":1},"sections":[{"crc32":%d,"length":2,"name":"s","offset":0}],'
        b'"version":[1,0]}' % zlib.crc32(b"xy")
    )


def test_golden_bytes_match_docs_example():
    """Pins the on-disk format: this is the worked example in docs/format.md."""
    blob = container_bytes({"k": 1}, {"a": b"hello", "b": b""})
    manifest = (b'{"format":"dcc","meta":{"k":1},"sections":[{"crc32":907060870,"length":5,"name":"a","offset":0},'
                b'{"crc32":0,"length":0,"name":"b","offset":8}],"version":[1,0]}')
    assert blob == (MAGIC + b"\x01\x00\x00\x00" + b"\x00\x00\x00\x00" + struct.pack("<Q", 158)
                    + bytes.fromhex("3c9eec66") + manifest + bytes(6) + b"hello" + bytes(3))
    assert len(blob) == 200 and container_overhead({"k": 1}, {"a": b"hello", "b": b""}) == 195


def test_section_order_is_insertion_order_and_bytes_like_accepted():
    c = read_container(container_bytes({}, {"z": bytearray(b"1"), "a": memoryview(b"22"), "m": b"333"}))
    assert c.section_names == ("z", "a", "m")
    assert c.section("a") == b"22"


def test_tuples_read_back_as_lists():
    assert read_container(container_bytes({"shape": (3, 4)}, {})).meta == {"shape": [3, 4]}


def test_bytearray_and_memoryview_sources():
    blob = container_bytes({"a": 1}, {"s": b"x" * 9})
    for src in (bytearray(blob), memoryview(blob)):
        assert read_container(src).section("s") == b"x" * 9


def test_missing_section_is_format_error():
    c = read_container(container_bytes({}, {"a": b""}))
    with pytest.raises(FormatError, match="no section named 'nope'"):
        c.section("nope")
    assert "nope" not in c
    assert isinstance(c, Container) and "Container(" in repr(c)


# ------------------------------------------------------------------------------------------------ write-side validation

@pytest.mark.parametrize("meta, exc, frag", [
    ({"x": float("nan")}, ValueError, "NaN"),
    ({"x": [float("inf")]}, ValueError, "Infinity"),
    ({1: "a"}, TypeError, "keys must be str"),
    ({"x": {2: 1}}, TypeError, "keys must be str"),
    ({"x": b"bytes"}, TypeError, "not a JSON value"),
    ({"x": np.int64(3)}, TypeError, "not a JSON value"),
    ({"x": "\ud800"}, ValueError, "surrogate"),
    ([1, 2], TypeError, "meta must be a dict"),
])
def test_write_rejects_bad_meta(meta, exc, frag):
    with pytest.raises(exc, match=frag):
        container_bytes(meta, {})


def test_write_rejects_cycles_and_deep_meta():
    a: list = []
    a.append(a)
    with pytest.raises(ValueError, match="nested deeper"):
        container_bytes({"a": a}, {})
    deep: list = []
    for _ in range(C.MAX_META_DEPTH):
        deep = [deep]
    with pytest.raises(ValueError, match="nested deeper"):
        container_bytes({"d": deep}, {})
    ok: list = []
    for _ in range(C.MAX_META_DEPTH - 2):
        ok = [ok]
    assert read_container(container_bytes({"d": ok}, {})).meta == {"d": ok}


@pytest.mark.parametrize("sections, exc, frag", [
    ({"": b"x"}, ValueError, "non-empty str"),
    ({3: b"x"}, ValueError, "non-empty str"),
    ({"a": "text"}, TypeError, "bytes"),
    ({"a": np.zeros(3)}, TypeError, "pack_array"),
    ({"a": memoryview(bytes(8))[::2]}, TypeError, "C-contiguous"),
])
def test_write_rejects_bad_sections(sections, exc, frag):
    with pytest.raises(exc, match=frag):
        container_bytes({}, sections)


# ------------------------------------------------------------------------------------------------ atomicity

def _no_temp_files(directory: Path) -> bool:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("target", ["replace", "fsync", "midwrite"])
def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch, target):
    path = tmp_path / "model.dcc"
    write_container(path, {"v": "old"}, {"s": b"old"})
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("simulated failure")

    if target == "replace":
        monkeypatch.setattr(C.os, "replace", boom)
    elif target == "fsync":
        monkeypatch.setattr(C.os, "fsync", boom)
    else:
        real_chunks = C._chunks

        def chunks(plan):
            it = real_chunks(plan)
            yield next(it)
            yield next(it)
            raise OSError("disk full (simulated)")

        monkeypatch.setattr(C, "_chunks", chunks)
    with pytest.raises(OSError, match="simulated"):
        write_container(path, {"v": "new"}, {"s": b"new" * 1000})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_container(path).meta == {"v": "old"}
    assert _no_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dcc"]


def test_failed_write_to_new_path_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(C.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError):
        write_container(tmp_path / "new.dcc", {}, {"s": b"x"})
    assert list(tmp_path.iterdir()) == []


def test_bad_input_fails_before_touching_disk(tmp_path):
    path = tmp_path / "m.dcc"
    path.write_bytes(b"precious")
    with pytest.raises(ValueError):
        write_container(path, {"x": float("nan")}, {})
    assert path.read_bytes() == b"precious" and sorted(os.listdir(tmp_path)) == ["m.dcc"]


def test_write_overwrites_atomically_and_uses_umask_permissions(tmp_path):
    path = tmp_path / "m.dcc"
    write_container(path, {"v": 1}, {})
    write_container(path, {"v": 2}, {"s": b"abc"})
    assert read_container(path).meta == {"v": 2}
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert _no_temp_files(tmp_path)


# ------------------------------------------------------------------------------------------------ bad inputs

def test_valid_reference_file_reads():
    m, data = good()
    c = read_container(raw_file(m, data))
    assert c.section("c") == bytes(range(20)) and c.meta == {"k": 1}


def test_empty_and_short_files():
    expect_error(b"", "not a .dcc file")
    expect_error(MAGIC[:5], "truncated", "header")
    expect_error(MAGIC + b"\x01\x00", "truncated", "28-byte header")


def test_wrong_magic():
    m, data = good()
    expect_error(b"PK\x03\x04" + raw_file(m, data)[4:], "not a .dcc file")
    expect_error(b"hello world, this is a text file with enough bytes", "not a .dcc file")
    text_mode = raw_file(m, data).replace(b"\r\n", b"\n", 1)
    expect_error(text_mode, "not a .dcc file", "text-mode")


def test_newer_major_version_says_upgrade():
    m, data = good()
    e = expect_error(raw_file(m, data, major=2, minor=3), "2.3", "1.x", "upgrade dccomp")
    assert isinstance(e, DccompError) and isinstance(e, ValueError)
    expect_error(raw_file(m, data, major=0), "unsupported", "0.0")


def test_newer_minor_version_is_read_and_extra_keys_ignored():
    m, data = manifest_of({"a": 1}, [("s", b"xyz")], version=(1, 4))
    m["future"] = {"x": 1}
    m["sections"][0]["future_field"] = 7
    c = read_container(raw_file(m, data, minor=4))
    assert c.version == (1, 4) and c.section("s") == b"xyz"
    # ... but the current minor version is strict about unknown keys
    m2, data2 = good()
    m2["future"] = 1
    expect_error(raw_file(m2, data2), "unknown key", "future")


def test_manifest_version_must_match_header():
    m, data = good()
    expect_error(raw_file(m, data, minor=1), "manifest says version 1.0", "header says 1.1")


def test_unknown_flags():
    m, data = good()
    expect_error(raw_file(m, data, flags=4), "unknown header flags", "0x00000004")


def test_manifest_length_limits():
    m, data = good()
    blob = raw_file(m, data)
    expect_error(raw_file(m, data, mlen=len(blob)), "truncated", "manifest")
    expect_error(raw_file(m, data, mlen=2**64 - 1), "max_manifest_bytes")
    expect_error(blob, "max_manifest_bytes=10", max_manifest_bytes=10)
    expect_error(blob, "max_total_bytes=100", max_total_bytes=100)
    assert read_container(blob, max_total_bytes=None).file_size == len(blob)


def test_manifest_crc_mismatch():
    m, data = good()
    expect_error(raw_file(m, data, crc=1234), "manifest CRC-32 mismatch", "0x000004d2")


@pytest.mark.parametrize("manifest, frag", [
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b"{not json", "not valid JSON"),
    (b'{"a":1,"a":2}', "duplicate JSON key 'a'"),
    (b'{"meta":{"x":NaN}}', "NaN"),
    (b'{"meta":{"x":-Infinity}}', "-Infinity"),
    (b'{"meta":{"x":1e999}}', "overflows"),
    (b'{"meta":{"x":' + b"9" * 5000 + b"}}", "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    (b"\xef\xbb\xbf{}", "not valid JSON"),
    (b"[]", "must be a JSON object, got an array"),
    (b"", "not valid JSON"),
])
def test_bad_manifest_text(manifest, frag):
    expect_error(raw_file(manifest), frag)


def _mutated(fn) -> bytes:
    m, data = good()
    fn(m)
    return raw_file(m, data)


@pytest.mark.parametrize("mutate, frags", [
    (lambda m: m.pop("sections"), ["lacks key", "sections"]),
    (lambda m: m.pop("meta"), ["lacks key", "meta"]),
    (lambda m: m.update(format="zip"), ["'format'", "'zip'", "dcc"]),
    (lambda m: m.update(format=None), ["'format'", "None"]),
    (lambda m: m.update(version=[1]), ["'version'"]),
    (lambda m: m.update(version=[True, 0]), ["'version'"]),
    (lambda m: m.update(version="1.0"), ["'version'"]),
    (lambda m: m.update(meta=[1]), ["'meta'", "object", "array"]),
    (lambda m: m.update(sections={}), ["'sections'", "array", "object"]),
    (lambda m: m["sections"].__setitem__(0, 5), ["sections[0]", "object", "integer"]),
    (lambda m: m["sections"][0].pop("crc32"), ["sections[0]", "lacks key", "crc32"]),
    (lambda m: m["sections"][0].update(extra=1), ["sections[0]", "unknown key", "extra"]),
    (lambda m: m["sections"][0].update(name=""), ["'name'", "non-empty string"]),
    (lambda m: m["sections"][0].update(name=7), ["'name'", "non-empty string", "7"]),
    (lambda m: m["sections"][1].update(name="a"), ["duplicate section name 'a'"]),
    (lambda m: m["sections"][0].update(offset=-1), ["section 'a'", "'offset'", "non-negative", "-1"]),
    (lambda m: m["sections"][0].update(offset=True), ["section 'a'", "'offset'", "True"]),
    (lambda m: m["sections"][0].update(offset=0.0), ["section 'a'", "'offset'", "0.0"]),
    (lambda m: m["sections"][0].update(length="5"), ["section 'a'", "'length'", "'5'"]),
    (lambda m: m["sections"][0].update(crc32=2**32), ["section 'a'", "'crc32'", "32 bits"]),
    (lambda m: m["sections"][2].update(offset=4), ["section 'c'", "overlaps section 'a'"]),
    (lambda m: m["sections"][2].update(offset=16), ["section 'c'", "gap", "expected offset 8"]),
    (lambda m: m["sections"][0].update(offset=1), ["section 'a'", "gap", "expected offset 0"]),
    (lambda m: m["sections"].reverse(), ["section 'c'", "expected offset 0"]),
    (lambda m: m["sections"][2].update(length=21), ["truncated", "section 'c' is cut off"]),
    (lambda m: m["sections"][2].update(length=19), ["1 bytes of trailing data"]),
    (lambda m: m["sections"].pop(), ["trailing data"]),
    (lambda m: m["sections"][0].update(crc32=0), ["section 'a'", "CRC-32 mismatch", "0x00000000"]),
    (lambda m: m["meta"].update(s="\ud800"), ["surrogate"]),
    (lambda m: m["sections"][0].update(name="\udc00"), ["surrogate"]),
])
def test_bad_manifest_schema(mutate, frags):
    expect_error(_mutated(mutate), *frags)


def test_deep_meta_rejected_on_read():
    m, data = good()
    m["meta"]["d"] = json.loads("[" * 70 + "]" * 70)
    expect_error(raw_file(m, data), "nested deeper than 64")


def test_truncation_and_trailing_garbage():
    m, data = good()
    blob = raw_file(m, data)
    expect_error(blob[:-1], "truncated", "cut off")
    expect_error(blob + b"\x00", "1 bytes of trailing data")
    expect_error(blob[: HEADER_SIZE + 3], "truncated", "manifest")


def test_nonzero_padding():
    m, data = good()
    blob = bytearray(raw_file(m, data))
    mlen = HDR.unpack_from(blob)[4]
    assert (HEADER_SIZE + mlen) % 8, "test needs a padded manifest"
    blob[HEADER_SIZE + mlen] = 1
    expect_error(bytes(blob), "nonzero padding between the manifest and the data area")
    m, data = good()
    data = bytearray(data)
    data[6] = 9  # padding after section 'a' (5 bytes), before 'b' at offset 8
    expect_error(raw_file(m, bytes(data)), "nonzero padding before section 'b'")


def test_section_crc_mismatch_names_section():
    m, data = good()
    data = bytearray(data)
    data[8 + 3] ^= 0x10  # inside 'c'
    expect_error(raw_file(m, bytes(data)), "section 'c'", "CRC-32 mismatch")


def test_file_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_container(tmp_path / "missing.dcc")
    with pytest.raises(FormatError, match="not a regular file"):
        read_container(tmp_path)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        with pytest.raises(FormatError, match="not a regular file"):
            read_container(fifo)  # must not block
    p = tmp_path / "junk.dcc"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(FormatError, match="not a .dcc file"):
        read_container(p)


def test_huge_declared_sizes_do_not_allocate():
    m, data = good()
    m["sections"][2]["length"] = 2**62
    t = time.perf_counter()
    expect_error(raw_file(m, data), "truncated")
    m, data = good()
    m["sections"][2]["offset"] = 10**300
    expect_error(raw_file(m, data), "section 'c'")
    assert time.perf_counter() - t < 1


# ------------------------------------------------------------------------------------------------ typed arrays

@pytest.mark.parametrize("dtype", ARRAY_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3), (2, 0, 4), (1, 1, 1, 5)])
def test_array_round_trip(dtype, shape):
    rng = np.random.default_rng(0)
    a = (rng.integers(0, 2, size=shape) if dtype == "bool" else rng.integers(0, 200, size=shape)).astype(dtype)
    buf, descr = pack_array(a)
    assert descr == {"dtype": dtype, "shape": list(shape)}
    assert len(buf) == a.size * np.dtype(dtype).itemsize
    assert json.loads(json.dumps(descr)) == descr
    b = unpack_array(buf, descr)
    assert b.dtype == np.dtype(dtype) and b.shape == shape and np.array_equal(a, b) and b.flags.writeable
    v = unpack_array(buf, descr, copy=False)
    assert np.array_equal(a, v) and not v.flags.writeable


def test_array_little_endian_and_layout():
    a = np.arange(6, dtype=">i4").reshape(2, 3).T  # big-endian, non-contiguous
    buf, descr = pack_array(a)
    assert buf == np.ascontiguousarray(a).astype("<i4").tobytes()
    assert buf[:4] == b"\x00\x00\x00\x00" and buf[4:8] == b"\x03\x00\x00\x00"
    assert descr == {"dtype": "int32", "shape": [3, 2]}
    assert np.array_equal(unpack_array(buf, descr), a)
    assert pack_array(np.array([1.0], dtype="<f2"))[0] == b"\x00\x3c"


def test_array_bool_is_canonical():
    odd = np.array([2, 0, 1], np.uint8).view(bool)
    assert pack_array(odd)[0] == b"\x01\x00\x01"
    with pytest.raises(FormatError, match="bool"):
        unpack_array(b"\x02", {"dtype": "bool", "shape": [1]})


def test_array_through_container():
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    buf, descr = pack_array(w)
    c = read_container(container_bytes({"w": descr}, {"w": buf}))
    assert np.array_equal(unpack_array(c.section_view("w"), c.meta["w"], max_elems=12, copy=False), w)


@pytest.mark.parametrize("a", [np.zeros(2, np.float64), np.zeros(2, np.int8), np.zeros(2, np.complex64), [1, 2]])
def test_pack_rejects(a):
    with pytest.raises(TypeError):
        pack_array(a)


@pytest.mark.parametrize("buf, descr, kw, frag", [
    (b"", None, {}, "descriptor"),
    (b"", {"dtype": "uint8"}, {}, "keys"),
    (b"", {"dtype": "uint8", "shape": [0], "x": 1}, {}, "keys"),
    (b"", {"dtype": "float64", "shape": [0]}, {}, "not allowed"),
    (b"", {"dtype": "<f4", "shape": [0]}, {}, "not allowed"),
    (b"", {"dtype": 1, "shape": [0]}, {}, "not allowed"),
    (b"", {"dtype": "uint8", "shape": [-1]}, {}, "non-negative"),
    (b"", {"dtype": "uint8", "shape": [True]}, {}, "non-negative"),
    (b"", {"dtype": "uint8", "shape": [1.0]}, {}, "non-negative"),
    (b"", {"dtype": "uint8", "shape": 3}, {}, "list"),
    (b"", {"dtype": "uint8", "shape": [1] * 33}, {}, "at most 32"),
    (b"", {"dtype": "uint8", "shape": [0, 2**40, 2**40]}, {}, "too large"),
    (b"\x00" * 7, {"dtype": "int32", "shape": [2]}, {}, "needs 8 bytes, buffer has 7"),
    (b"\x00" * 8, {"dtype": "uint8", "shape": [8]}, {"max_elems": 7}, "more than the limit 7"),
])
def test_unpack_rejects(buf, descr, kw, frag):
    with pytest.raises(FormatError, match=frag):
        unpack_array(buf, descr, **kw)


# ------------------------------------------------------------------------------------------------ fuzz

def _load_fuzzer():
    path = Path(__file__).resolve().parents[1] / "bench" / "fuzz_container.py"
    spec = importlib.util.spec_from_file_location("fuzz_container", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_container", mod)
    spec.loader.exec_module(mod)
    return mod


def test_fuzz_10000_mutations():
    fz = _load_fuzzer()
    t = time.perf_counter()
    res = fz.run_fuzz(iterations=10_000, seed=20160501)
    elapsed = time.perf_counter() - t
    assert res.iterations == 10_000
    assert elapsed < 20, f"fuzz took {elapsed:.1f} s"
    assert res.slowest_s < 1.0
    failures = "\n".join(f"{o} from {n} seed {s}: {d.hex()}\n{tb or ''}" for o, n, s, d, tb in res.failures)
    assert res.bad == 0, f"{dict(res.counts)}\n{failures}"
    # raw mutations never read back successfully unless the bytes are unchanged (every byte is checked)
    assert set(res.counts) <= {"format_error", "unchanged", "ok_valid_after_fixed_crc"}, dict(res.counts)
    assert res.counts["format_error"] > 8_000
    print(dict(res.counts))


def test_compressed_manifest_round_trip_and_smaller():
    meta = {"tensors": [{"name": f"layer{i}.weight", "shape": [300, 784], "coder": "huffman"} for i in range(20)]}
    sections = {f"layer{i}.weight/codes": bytes([i]) * 10 for i in range(20)}
    plain = container_bytes(meta, sections)
    packed = container_bytes(meta, sections, compress_manifest=True)
    assert len(packed) < len(plain) // 2
    c = read_container(packed)
    assert c.meta == meta and c.flags == 1
    assert [c.section(n) for n in sections] == list(sections.values())
    assert container_bytes(meta, sections, compress_manifest=True) == packed  # deterministic


def test_compressed_manifest_bomb_and_garbage_refused():
    import zlib as _z
    bomb = _z.compress(b"{" + b" " * (1 << 20), 9)
    f = HDR.pack(MAGIC, 1, 0, 1, len(bomb), _z.crc32(bomb)) + bomb
    expect_error(f, "more than max_manifest_bytes", max_manifest_bytes=1 << 16)
    junk = b"not zlib at all"
    f = HDR.pack(MAGIC, 1, 0, 1, len(junk), _z.crc32(junk)) + junk
    expect_error(f, "does not inflate")

