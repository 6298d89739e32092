"""Fuzz the ``.dcc`` reader: mutate a real small container and check that every outcome is safe.

Usage::

    python bench/fuzz_container.py --seconds 60 [--seed 0]
    python bench/fuzz_container.py --iterations 100000

Targets: a small realistic container (90% of cases) and the bare container (no meta, no sections).
Two families of mutations:

* raw (bit flips, byte overwrites, truncation, extension, insertion, deletion, chunk duplication, random
  header fields): the CRCs are left stale, so every changed file must raise ``FormatError``. A successful
  read of a changed file is an *undetected corruption* and counts as a failure.
* structure-aware ("fixed CRC": manifest byte edits and JSON-level edits of the manifest, section edits) with
  the CRCs recomputed, to reach the schema and layout checks behind the CRC. These may legitimately read
  back (e.g. a changed meta value); the read must then be self-consistent.

Any exception other than ``FormatError`` is a failure; it is printed with a one-line reproducer.
Exit status 1 if there was any failure. The test suite runs this module's :func:`run_fuzz` for 10,000 cases.
"""
from __future__ import annotations

import json
import os
import random
import struct
import sys
import traceback
import zlib
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fuzzlib import FuzzResult, Mutator, check_budget, run_cases  # noqa: E402  (the driver shared with fuzz_model_file)
from fuzzlib import main as fuzz_main  # noqa: E402

from dccomp.container import HEADER_SIZE, MAGIC, container_bytes, read_container  # noqa: E402
from dccomp.errors import FormatError  # noqa: E402

_HDR = struct.Struct("<8sHHIQI")

BAD_OUTCOMES = ("undetected_corruption", "inconsistent_read")  # plus any "exception:<Type>"


def sample_container() -> bytes:
    """A small but realistic container: nested meta, four sections incl. an empty one and unaligned lengths."""
    meta = {
        "model": "lenet-300-100",
        "layers": [
            {"name": "fc1", "shape": [300, 784], "bits": 8, "codebook": [0.5, -0.25, 1e-3], "sparse": True},
            {"name": "fc2", "shape": [100, 300], "bits": 5, "codebook": [], "sparse": False},
        ],
        "note": "unicode: \u00e9\u4e2d",
        "ratio": 39.5,
        "none": None,
    }
    sections = {
        "fc1.idx": bytes((i * 37 + 11) % 256 for i in range(101)),
        "empty": b"",
        "fc1.codebook": struct.pack("<3f", 0.5, -0.25, 1e-3),
        "fc2.huff": bytes((i * i) % 251 for i in range(37)),
    }
    return container_bytes(meta, sections)


def _split(data: bytes) -> tuple[tuple, bytes, bytes]:
    hdr = _HDR.unpack_from(data)
    mlen = hdr[4]
    return hdr, data[HEADER_SIZE : HEADER_SIZE + mlen], data[HEADER_SIZE + mlen :]


def _join(hdr: tuple, manifest: bytes, rest: bytes, old_mlen: int) -> bytes:
    """Reassemble with a fresh manifest CRC and length, keeping the data area 8-byte aligned."""
    old_pad = (-(HEADER_SIZE + old_mlen)) % 8
    pad = (-(HEADER_SIZE + len(manifest))) % 8
    h = _HDR.pack(hdr[0], hdr[1], hdr[2], hdr[3], len(manifest), zlib.crc32(manifest) & 0xFFFFFFFF)
    return h + manifest + bytes(pad) + rest[old_pad:]


# ----------------------------------------------------------------------------- raw mutations (CRC left stale)

def m_bitflip(rng: random.Random, d: bytes) -> bytes:
    b = bytearray(d)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
    return bytes(b)


def m_overwrite(rng: random.Random, d: bytes) -> bytes:
    b = bytearray(d)
    for _ in range(rng.choice((1, 1, 2, 4))):
        b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    return bytes(b)


def m_truncate(rng: random.Random, d: bytes) -> bytes:
    return d[: rng.choice((0, rng.randrange(HEADER_SIZE + 1), rng.randrange(len(d)), len(d) - 1))]


def m_extend(rng: random.Random, d: bytes) -> bytes:
    n = rng.choice((1, 7, 8, rng.randrange(1, 300)))
    return d + rng.choice((bytes(n), rng.randbytes(n), d[:n]))


def m_insert(rng: random.Random, d: bytes) -> bytes:
    i = rng.randrange(len(d) + 1)
    return d[:i] + rng.randbytes(rng.choice((1, 8, rng.randrange(1, 64)))) + d[i:]


def m_delete(rng: random.Random, d: bytes) -> bytes:
    i = rng.randrange(len(d))
    return d[:i] + d[i + rng.choice((1, 8, rng.randrange(1, 64))) :]


def m_duplicate(rng: random.Random, d: bytes) -> bytes:
    i = rng.randrange(len(d))
    j = min(len(d), i + rng.randrange(1, 64))
    k = rng.randrange(len(d) + 1)
    return d[:k] + d[i:j] + d[k:]


def _interesting(rng: random.Random, bits: int) -> int:
    top = (1 << bits) - 1
    return rng.choice((0, 1, 2, 7, 8, top, top - 1, 1 << (bits - 1), rng.randrange(top + 1), rng.randrange(256)))


def m_header_field(rng: random.Random, d: bytes) -> bytes:
    magic, major, minor, flags, mlen, crc = _HDR.unpack_from(d)
    field_ = rng.randrange(6)
    if field_ == 0:
        magic = rng.choice((MAGIC.replace(b"\r\n", b"\n") + b"\x00", b"PK\x03\x04\x00\x00\x00\x00", rng.randbytes(8)))[:8]
    elif field_ == 1:
        major = _interesting(rng, 16)
    elif field_ == 2:
        minor = _interesting(rng, 16)
    elif field_ == 3:
        flags = _interesting(rng, 32)
    elif field_ == 4:
        mlen = rng.choice((_interesting(rng, 64), mlen + rng.randrange(-16, 17) if mlen >= 16 else 0, len(d)))
        mlen = max(0, min(mlen, (1 << 64) - 1))
    else:
        crc = _interesting(rng, 32)
    return _HDR.pack(magic, major, minor, flags, mlen, crc) + d[HEADER_SIZE:]


RAW: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "bitflip": m_bitflip, "overwrite": m_overwrite, "truncate": m_truncate, "extend": m_extend,
    "insert": m_insert, "delete": m_delete, "duplicate": m_duplicate, "header_field": m_header_field,
}


# ----------------------------------------------------------------------- structure-aware (CRCs recomputed)

_WEIRD_JSON = [None, True, False, -1, 0, 1, 2**31, 2**64, -(2**63), 1.5, -0.0, "", "x", "dcc", [], {}, [1, 0], [2, 0],
               [1], [1, 0, 0], {"a": 1}, "\u00e9", 10**30]


def f_manifest_bytes(rng: random.Random, d: bytes) -> bytes:
    hdr, man, rest = _split(d)
    b = bytearray(man)
    op = rng.randrange(4)
    if op == 0 and b:
        b[rng.randrange(len(b))] = rng.choice(b'{}[]",:0123456789-+.eE \\ntfu' + bytes([0x80, 0xC3, 0xFF, 0xED]))
    elif op == 1 and b:
        del b[rng.randrange(len(b))]
    elif op == 2:
        b[rng.randrange(len(b) + 1) : 0] = rng.choice((b" ", b",", b"NaN", b"Infinity", b"\xef\xbb\xbf", b"\\ud800", b"1e999",
                                                       b'"format":"dcc",', b"[" * 50))
    else:
        cut = rng.randrange(len(b) + 1)
        b = b[:cut]
    return _join(hdr, bytes(b), rest, len(man))


def f_manifest_json(rng: random.Random, d: bytes) -> bytes:
    hdr, man, rest = _split(d)
    m = json.loads(man)
    secs = m["sections"]
    op = rng.randrange(12)
    if op == 0:  # replace a top-level value
        m[rng.choice(sorted(m))] = rng.choice(_WEIRD_JSON)
    elif op == 1:  # replace a section field
        s = rng.choice(secs)
        s[rng.choice(sorted(s))] = rng.choice(_WEIRD_JSON)
    elif op == 2:  # nudge an offset or length
        s = rng.choice(secs)
        key = rng.choice(("offset", "length"))
        s[key] = max(-3, s[key] + rng.choice((-9, -8, -1, 1, 8, 9, 10**6)))
    elif op == 3:  # drop a key
        target = rng.choice((m, rng.choice(secs)))
        del target[rng.choice(sorted(target))]
    elif op == 4:  # add an unknown key
        rng.choice((m, rng.choice(secs)))["extra"] = 1
    elif op == 5:  # duplicate a section name
        a, b = rng.sample(range(len(secs)), 2)
        secs[b]["name"] = secs[a]["name"]
    elif op == 6:  # reorder sections
        rng.shuffle(secs)
    elif op == 7:  # drop a section
        secs.pop(rng.randrange(len(secs)))
    elif op == 8:  # change meta (legitimately readable)
        m["meta"][rng.choice(("model", "ratio", "new"))] = rng.choice(_WEIRD_JSON)
    elif op == 9:  # version mismatch with the header
        m["version"] = rng.choice(([1, 1], [2, 0], [0, 9], [1, 0]))
    elif op == 10:  # deep nesting
        m["meta"]["deep"] = json.loads("[" * 70 + "]" * 70)
    else:  # set a wrong CRC in a section
        s = rng.choice(secs)
        s["crc32"] = (s["crc32"] + rng.randrange(1, 1 << 32)) & 0xFFFFFFFF
    man2 = json.dumps(m, sort_keys=rng.random() < 0.5, separators=rng.choice(((",", ":"), (", ", ": ")))).encode()
    return _join(hdr, man2, rest, len(man))


def f_section_data(rng: random.Random, d: bytes) -> bytes:
    """Change a section byte and fix its CRC: a legitimately different but valid file."""
    hdr, man, rest = _split(d)
    m = json.loads(man)
    s = rng.choice([s for s in m["sections"] if s["length"]])
    pad = (-(HEADER_SIZE + len(man))) % 8
    data = bytearray(rest[pad:])
    data[s["offset"] + rng.randrange(s["length"])] ^= 1 + rng.randrange(255)
    s["crc32"] = zlib.crc32(data[s["offset"] : s["offset"] + s["length"]]) & 0xFFFFFFFF
    man2 = json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return _join(hdr, man2, bytes(pad) + bytes(data), len(man))


FIXED: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "fixed:manifest_bytes": f_manifest_bytes, "fixed:manifest_json": f_manifest_json,
    "fixed:section_data": f_section_data,
}


# ------------------------------------------------------------------------------------------------ driver

def classify(original: bytes, mutated: bytes, fixed_crc: bool) -> tuple[str, str | None]:
    """Outcome of reading ``mutated``: (outcome, traceback or None)."""
    try:
        c = read_container(mutated)
    except FormatError:
        return "format_error", None
    except Exception as e:  # noqa: BLE001 - any other exception is the bug we look for
        return f"exception:{type(e).__name__}", traceback.format_exc()
    if mutated == original:
        return "unchanged", None
    if not fixed_crc:
        return "undetected_corruption", None
    for info in c.sections:  # a readable file must be self-consistent
        if zlib.crc32(c.section(info.name)) & 0xFFFFFFFF != info.crc32 or len(c.section(info.name)) != info.length:
            return "inconsistent_read", None
    return "ok_valid_after_fixed_crc", None


def run_fuzz(iterations: int | None = None, seconds: float | None = None, seed: int = 0,
             max_failures: int = 20) -> FuzzResult:
    """Run mutations until ``iterations`` cases or ``seconds`` elapsed (whichever first; at least one given)."""
    check_budget(iterations, seconds)
    full = sample_container()
    bare = container_bytes({}, {})  # zero sections: a second, degenerate target
    mutators = list(RAW.items()) * 3 + list(FIXED.items())  # 8*3 raw : 3 fixed
    bare_mutators = list(RAW.items()) + [("fixed:manifest_bytes", f_manifest_bytes)]

    def pick(rng: random.Random) -> tuple[bytes, str, Mutator]:
        if rng.random() < 0.9:
            return (full, *rng.choice(mutators))
        return (bare, *rng.choice(bare_mutators))

    return run_cases(pick, classify, BAD_OUTCOMES, iterations, seconds, seed, max_failures)


def main(argv: list[str] | None = None) -> int:
    return fuzz_main(argv, __doc__, run_fuzz, slowest="read", outcome_width=30, mutator_width=24,
                     reproducer=lambda data: "python -c \"from dccomp.container import read_container; "
                                             f"read_container(bytes.fromhex('{data.hex()}'))\"")


if __name__ == "__main__":
    sys.exit(main())
