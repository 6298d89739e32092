"""The ``.dcc`` container: a JSON manifest plus named binary sections, in one checksummed file.

This module knows nothing of dccomp's IR; the caller maps its objects onto ``meta`` (free JSON) and
``sections`` (named byte strings). The byte-by-byte layout is specified in ``docs/format.md``; in short
(all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89DCC\\r\\n\\x1a\\n"
    8       2     uint16 major version (1)
    10      2     uint16 minor version (0)
    12      4     uint32 flags (0; any set bit is refused)
    16      8     uint64 manifest length M, in bytes
    24      4     uint32 CRC-32 of the manifest bytes
    28      M     manifest: UTF-8 JSON, sorted keys, no whitespace
    28+M    P     zero padding up to the next multiple of 8 (P = 0..7); the data area starts there
    ...           sections back to back, each starting at a multiple of 8 from the data area start,
                  separated by zero padding; the file ends exactly at the end of the last section

The manifest is ``{"format": "dcc", "meta": {...}, "sections": [{"crc32": int, "length": int, "name": str,
"offset": int}, ...], "version": [1, 0]}`` with offsets counted from the start of the data area.

Safety: reading a file never runs code (no pickle, no eval); every field is validated, sizes are checked
against the file size and the limits before anything large is allocated, and every malformed input raises
:class:`~dccomp.errors.FormatError` naming what is wrong. Every byte of a valid file is covered by a check:
the header fields are validated (the version is also repeated in the CRC-covered manifest), the manifest and
each section carry a CRC-32, and padding must be zero -- so no accidental corruption reads back silently.
(CRC-32 detects accidents, not tampering: it is not a signature.)
"""
from __future__ import annotations

import json
import math
import os
import secrets
import stat
import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Iterator, NamedTuple, Union

import numpy as np

from .errors import FormatError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "ALIGNMENT",
    "DEFAULT_MAX_MANIFEST_BYTES",
    "DEFAULT_MAX_TOTAL_BYTES",
    "MAX_META_DEPTH",
    "ARRAY_DTYPES",
    "SectionInfo",
    "Container",
    "container_bytes",
    "container_overhead",
    "write_container",
    "read_container",
    "pack_array",
    "unpack_array",
]

MAGIC = b"\x89DCC\r\n\x1a\n"
"""8-byte file signature. Like PNG's: the high byte catches 7-bit transfers, CR LF / LF / ^Z catch text-mode
line-ending conversion and truncation by DOS ``type``."""

FORMAT_VERSION = (1, 0)
"""(major, minor) written by this dccomp. A reader accepts any file with the same major version; a newer
minor version may add manifest keys, which this reader then ignores."""

_HEADER = struct.Struct("<8sHHIQI")
HEADER_SIZE = _HEADER.size  # 28 bytes
ALIGNMENT = 8
"""Data area start and every section offset are multiples of this many bytes (so typed arrays up to 8-byte
items can be viewed in place)."""

FLAG_DEFLATE_MANIFEST = 0x1
"""Header flag bit 0: the stored manifest is zlib-compressed (RFC 1950) JSON; the CRC-32 in the header covers
the stored (compressed) bytes, the inflated size is bounded by ``max_manifest_bytes``."""
KNOWN_FLAGS = FLAG_DEFLATE_MANIFEST
"""Mask of header flag bits this reader understands: any other set bit makes the file unreadable."""

DEFAULT_MAX_MANIFEST_BYTES = 64 << 20  # 64 MiB
DEFAULT_MAX_TOTAL_BYTES = 16 << 30  # 16 GiB
MAX_META_DEPTH = 64
"""Deepest nesting of JSON arrays/objects allowed in ``meta`` (``{}`` has depth 1)."""

_MANIFEST_KEYS = frozenset({"format", "version", "meta", "sections"})
_SECTION_KEYS = frozenset({"name", "offset", "length", "crc32"})

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


class SectionInfo(NamedTuple):
    """Where a section lies: ``offset`` (bytes from the start of the data area), ``length`` (bytes) and the
    CRC-32 (``zlib.crc32``, unsigned 32-bit) of its bytes."""

    name: str
    offset: int
    length: int
    crc32: int


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


# --------------------------------------------------------------------------------------------------- writing


def _check_meta_for_write(value: Any, where: str = "meta", depth: int = 1) -> None:
    """Raise TypeError/ValueError unless ``value`` is plain JSON that reads back equal (tuples read back as lists)."""
    if isinstance(value, dict):
        if depth > MAX_META_DEPTH:
            raise ValueError(f"{where}: meta is nested deeper than {MAX_META_DEPTH} levels (or contains a reference cycle)")
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: object key {k!r} is a {type(k).__name__}; JSON object keys must be str")
            _check_str_for_write(k, f"{where} key {k!r}")
            _check_meta_for_write(v, f"{where}[{k!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        if depth > MAX_META_DEPTH:
            raise ValueError(f"{where}: meta is nested deeper than {MAX_META_DEPTH} levels (or contains a reference cycle)")
        for i, v in enumerate(value):
            _check_meta_for_write(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, str):
        _check_str_for_write(value, where)
    elif value is None or isinstance(value, (bool, int)):
        pass
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not allowed (JSON has no NaN or Infinity)")
    else:
        raise TypeError(f"{where}: a {type(value).__name__} is not a JSON value (use dict, list, str, int, float, bool, None)")


def _check_str_for_write(s: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where}: string is not valid Unicode (lone surrogate?): {e}") from None


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


class _Plan(NamedTuple):
    manifest: bytes  # as stored (compressed when flags has FLAG_DEFLATE_MANIFEST)
    views: list  # list[memoryview], one per section, in file order
    infos: list  # list[SectionInfo]
    data_start: int
    total: int
    flags: int = 0


def _plan(meta: Mapping[str, Any], sections: Mapping[str, Any], compress_manifest: bool = False) -> _Plan:
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict (a JSON object), got {type(meta).__name__}")
    meta = dict(meta)
    _check_meta_for_write(meta)
    if not isinstance(sections, Mapping):
        raise TypeError(f"sections must be a dict name -> bytes, got {type(sections).__name__}")
    views, infos, entries = [], [], []
    offset = 0
    for name, payload in sections.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"section name {name!r} must be a non-empty str")
        _check_str_for_write(name, f"section name {name!r}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"section {name!r} is a {type(payload).__name__}; pass bytes, bytearray or memoryview "
                "(use pack_array() for numpy arrays)"
            )
        try:
            view = memoryview(payload).cast("B")
        except TypeError as e:
            raise TypeError(f"section {name!r}: memoryview must be C-contiguous: {e}") from None
        offset = _align(offset)
        info = SectionInfo(name, offset, view.nbytes, zlib.crc32(view) & 0xFFFFFFFF)
        offset += view.nbytes
        views.append(view)
        infos.append(info)
        entries.append({"name": info.name, "offset": info.offset, "length": info.length, "crc32": info.crc32})
    manifest = {"format": "dcc", "version": list(FORMAT_VERSION), "meta": meta, "sections": entries}
    try:
        manifest_bytes = _dumps(manifest)
    except RecursionError:
        raise ValueError("meta is nested too deeply to encode") from None
    flags = 0
    if compress_manifest:
        manifest_bytes, flags = zlib.compress(manifest_bytes, 9), FLAG_DEFLATE_MANIFEST
    data_start = _align(HEADER_SIZE + len(manifest_bytes))
    return _Plan(manifest_bytes, views, infos, data_start, data_start + offset, flags)


def _chunks(plan: _Plan) -> Iterator[bytes | memoryview]:
    yield _HEADER.pack(
        MAGIC, FORMAT_VERSION[0], FORMAT_VERSION[1], plan.flags, len(plan.manifest),
        zlib.crc32(plan.manifest) & 0xFFFFFFFF
    )
    yield plan.manifest
    pos = HEADER_SIZE + len(plan.manifest)
    yield bytes(plan.data_start - pos)
    pos = 0  # now relative to the data area
    for info, view in zip(plan.infos, plan.views):
        if info.offset > pos:
            yield bytes(info.offset - pos)
        yield view
        pos = info.offset + info.length


def container_bytes(meta: Mapping[str, Any], sections: Mapping[str, Any], *, compress_manifest: bool = False) -> bytes:
    """Encode a container in memory; the result is byte-identical to the file :func:`write_container` writes.

    Args:
        meta: free JSON object (dict with str keys; values dict/list/tuple/str/int/finite float/bool/None,
            nested at most :data:`MAX_META_DEPTH` deep). Tuples read back as lists.
        sections: ``name -> bytes-like`` (bytes, bytearray, or C-contiguous memoryview), names non-empty str.
            Stored in insertion order. May be empty; sections may be empty.
        compress_manifest: store the manifest zlib-compressed (header flag bit 0); deterministic too.

    Returns:
        The whole file as ``bytes``. Same input gives the same bytes (sorted JSON keys, no timestamps).

    Raises:
        TypeError, ValueError: ``meta`` is not plain JSON or a section is not bytes-like / badly named.
    """
    return b"".join(_chunks(_plan(meta, sections, compress_manifest)))


def container_overhead(meta: Mapping[str, Any], sections: Mapping[str, Any], *,
                       compress_manifest: bool = False) -> int:
    """Bytes the container adds around the payload: header (28) + manifest + zero padding.

    Equals ``len(container_bytes(meta, sections)) - sum(len(s) for s in sections.values())``, without building
    the file (it does compute the section CRCs, one pass over the data, because the manifest contains them).
    Raises the same errors as :func:`container_bytes`.
    """
    plan = _plan(meta, sections, compress_manifest)
    return plan.total - sum(info.length for info in plan.infos)


def write_container(path: str | os.PathLike[str], meta: Mapping[str, Any], sections: Mapping[str, Any], *,
                    compress_manifest: bool = False) -> int:
    """Write a ``.dcc`` file atomically; return its size in bytes.

    The bytes are those of :func:`container_bytes` (streamed, not joined in memory). They go to a new temporary
    file in the same directory (``.<name>.<random>.tmp``, created with the usual umask permissions), which is
    flushed and ``fsync``-ed, then renamed onto ``path`` with :func:`os.replace`; the directory is then
    ``fsync``-ed (where the OS allows it) so the rename itself is durable. Readers thus see either the old file
    or the complete new one, never a partial file. On any exception the temporary file is removed and an
    existing file at ``path`` is left untouched.

    Raises:
        TypeError, ValueError: bad ``meta``/``sections`` (see :func:`container_bytes`), before anything is written.
        OSError: the file system failed (permissions, disk full, ...).
    """
    plan = _plan(meta, sections, compress_manifest)  # validate before touching the disk
    write_atomic(path, _chunks(plan))
    return plan.total


def write_atomic(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` atomically: into a new temporary file beside it (``.<name>.<random>.tmp``,
    usual umask permissions), flushed and ``fsync``-ed, renamed onto ``path`` with :func:`os.replace`, then the
    directory ``fsync``-ed where the OS allows it. Readers see the old file or the complete new one; on any
    exception the temporary file is removed and ``path`` is left untouched. Used for ``.dcc`` files, plots
    and JSON results.

    Raises:
        OSError: the file system failed (permissions, disk full, ...).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp(directory, os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


def _create_temp(directory: str, base: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp  # 0o666 & ~umask, like open(path, "wb")
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory!r}")


def _fsync_dir(directory: str) -> None:
    """Best effort: the new file is already in place; failing here would misreport a successful write."""
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory; NTFS renames are metadata-journaled
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and some CI sandboxes) refuse fsync on directories
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------- reading


class Container:
    """A validated ``.dcc`` file, as returned by :func:`read_container`.

    Attributes:
        meta: the free JSON object given to the writer (tuples came back as lists).
        version: ``(major, minor)`` format version of the file.
        flags: header flags (always 0 for files this reader accepts).
        sections: ``tuple[SectionInfo, ...]`` in file order.
        section_names: ``tuple[str, ...]`` in file order (= the writer's insertion order).
        file_size: total size in bytes.
        overhead: header + manifest + padding bytes (``file_size`` minus the section payloads).

    All section CRCs were verified when the container was read.
    """

    __slots__ = ("meta", "version", "flags", "sections", "section_names", "file_size", "overhead", "_data", "_index")

    def __init__(self, meta: dict, version: tuple[int, int], flags: int, sections: tuple[SectionInfo, ...],
                 data: memoryview, file_size: int) -> None:
        self.meta = meta
        self.version = version
        self.flags = flags
        self.sections = sections
        self.section_names = tuple(s.name for s in sections)
        self.file_size = file_size
        self.overhead = file_size - sum(s.length for s in sections)
        self._data = data
        self._index = {s.name: s for s in sections}

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def _info(self, name: str) -> SectionInfo:
        try:
            return self._index[name]
        except (KeyError, TypeError):
            shown = ", ".join(_q(n) for n in self.section_names[:20])
            more = ", ..." if len(self.section_names) > 20 else ""
            raise FormatError(f"container has no section named {_q(str(name))} (sections: {shown}{more})") from None

    def section(self, name: str) -> bytes:
        """The bytes of section ``name`` (a copy). Raises FormatError if there is no such section."""
        info = self._info(name)
        return bytes(self._data[info.offset : info.offset + info.length])

    def section_view(self, name: str) -> memoryview:
        """Read-only zero-copy view of section ``name`` (8-byte aligned in the file). Raises FormatError if absent."""
        info = self._info(name)
        return self._data[info.offset : info.offset + info.length].toreadonly()

    def __repr__(self) -> str:
        return (f"Container(version={self.version[0]}.{self.version[1]}, file_size={self.file_size}, "
                f"sections=[{', '.join(_q(n) for n in self.section_names[:20])}{', ...' if len(self.sections) > 20 else ''}])")


def read_container(source: Source, max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
                   max_total_bytes: int | None = DEFAULT_MAX_TOTAL_BYTES) -> Container:
    """Read and fully validate a ``.dcc`` container.

    Args:
        source: a path (``str`` / ``os.PathLike``) or the file's content (``bytes`` / ``bytearray`` /
            ``memoryview``; note that ``bytes`` is content, never a path). Content other than ``bytes`` is copied.
        max_manifest_bytes: refuse manifests longer than this many bytes (default 64 MiB).
        max_total_bytes: refuse files larger than this many bytes (default 16 GiB; ``None``: no limit).

    Returns:
        A :class:`Container`; the data area is held in memory (the file is read once, after the header and
        manifest have been validated against the file size and the limits).

    Raises:
        FormatError: anything wrong with the content: too short, bad magic ("not a .dcc file"), newer major
            version ("upgrade dccomp"), unknown flags, manifest too long / truncated / CRC mismatch / not UTF-8 /
            not JSON / duplicate keys / NaN / schema violation, sections overlapping or outside the data area or
            not at their 8-byte-aligned offsets, nonzero padding, trailing bytes, section CRC mismatch.
            Also: ``path`` is not a regular file, or it changed while being read.
        OSError: the file cannot be opened or read (missing, permissions).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        try:
            buf = source if type(source) is bytes else bytes(memoryview(source).cast("B"))
        except TypeError as e:
            raise TypeError(f"memoryview source must be C-contiguous: {e}") from None
        view = memoryview(buf)
        pos = 0

        def read_exact(n: int) -> memoryview:
            nonlocal pos
            out = view[pos : pos + n]
            pos += n
            return out

        return _parse(len(buf), read_exact, max_manifest_bytes, max_total_bytes)

    path = os.fspath(source)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device could block or never end
        raise FormatError(f"{path!r} is not a regular file")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size

        def read_file(n: int) -> memoryview:
            data = f.read(n)
            if len(data) != n:
                raise FormatError(f"{path!r} changed while being read (expected {n} more bytes, got {len(data)})")
            return memoryview(data)

        container = _parse(size, read_file, max_manifest_bytes, max_total_bytes)
        if f.read(1):
            raise FormatError(f"{path!r} grew while being read")
        return container


def _parse(size: int, read_exact: Callable[[int], memoryview], max_manifest_bytes: int,
           max_total_bytes: int | None) -> Container:
    # --- header
    head = bytes(read_exact(min(size, HEADER_SIZE)))
    n = min(len(head), len(MAGIC))
    if head[:n] != MAGIC[:n] or size == 0:
        if head[:4] == MAGIC[:4]:
            raise FormatError(
                f"not a .dcc file: magic {head[:8]!r} != {MAGIC!r}; the file looks corrupted by a text-mode "
                "transfer (line endings converted)"
            )
        raise FormatError(f"not a .dcc file (magic is {head[:8]!r}, expected {MAGIC!r})")
    if size < HEADER_SIZE:
        raise FormatError(f"truncated .dcc file: {size} bytes, shorter than the {HEADER_SIZE}-byte header")
    _, major, minor, flags, manifest_len, manifest_crc = _HEADER.unpack(head)
    if major > FORMAT_VERSION[0]:
        raise FormatError(
            f"this file uses .dcc format version {major}.{minor}, but this dccomp reads version "
            f"{FORMAT_VERSION[0]}.x only; upgrade dccomp"
        )
    if major < FORMAT_VERSION[0]:
        raise FormatError(f"unsupported .dcc format version {major}.{minor} (this dccomp reads {FORMAT_VERSION[0]}.x)")
    if flags & ~KNOWN_FLAGS:
        raise FormatError(f"unknown header flags 0x{flags & ~KNOWN_FLAGS:08x} (this dccomp knows 0x{KNOWN_FLAGS:08x}); "
                          "the file needs a newer dccomp")
    if max_total_bytes is not None and size > max_total_bytes:
        raise FormatError(f"file is {size} bytes, more than max_total_bytes={max_total_bytes}")
    if manifest_len > max_manifest_bytes:
        raise FormatError(f"manifest length {manifest_len} bytes exceeds max_manifest_bytes={max_manifest_bytes}")
    if manifest_len > size - HEADER_SIZE:
        raise FormatError(
            f"truncated .dcc file: header says the manifest is {manifest_len} bytes but only "
            f"{size - HEADER_SIZE} bytes follow the header"
        )

    # --- manifest
    manifest_bytes = read_exact(manifest_len)
    got_crc = zlib.crc32(manifest_bytes) & 0xFFFFFFFF
    if got_crc != manifest_crc:
        raise FormatError(f"manifest CRC-32 mismatch: header says 0x{manifest_crc:08x}, manifest bytes give 0x{got_crc:08x}")
    if flags & FLAG_DEFLATE_MANIFEST:
        manifest_bytes = _inflate(manifest_bytes, max_manifest_bytes)
    manifest = _load_json(manifest_bytes)
    meta, infos = _check_manifest(manifest, (major, minor))

    # --- layout: padding, sections, exact size
    data_start = _align(HEADER_SIZE + manifest_len)
    data_len = 0
    for i, info in enumerate(infos):
        expected = _align(data_len)
        if info.offset != expected:
            if info.offset > expected:
                why = "leaves a gap after the previous section"
            else:
                why = "lies before the end of the previous section"
                for other in reversed(infos[:i]):  # earlier sections are in order: ends decrease going back
                    if other.offset + other.length <= info.offset:
                        break
                    if other.length and other.offset < info.offset + max(info.length, 1):
                        why = (f"overlaps section {_q(other.name)} (bytes {other.offset}..{other.offset + other.length} "
                               "of the data area)")
                        break
            raise FormatError(
                f"section {_q(info.name)}: offset {info.offset} {why}; sections must be stored in manifest order, "
                f"each at the next multiple of {ALIGNMENT} (expected offset {expected})"
            )
        data_len = info.offset + info.length
    expected_size = data_start + data_len
    if size < expected_size:
        cut = next((i.name for i in infos if data_start + i.offset + i.length > size), None)
        where = f" (section {_q(cut)} is cut off)" if cut is not None else ""
        raise FormatError(f"truncated .dcc file: the manifest describes {expected_size} bytes, the file has {size}{where}")
    if size > expected_size:
        raise FormatError(
            f"{size - expected_size} bytes of trailing data after the last section (file has {size} bytes, "
            f"the manifest describes {expected_size})"
        )
    pad = read_exact(data_start - HEADER_SIZE - manifest_len)
    if any(pad):
        raise FormatError("nonzero padding between the manifest and the data area")
    data = read_exact(data_len)
    end = 0
    for info in infos:
        if any(data[end : info.offset]):
            raise FormatError(f"nonzero padding before section {_q(info.name)}")
        got = zlib.crc32(data[info.offset : info.offset + info.length]) & 0xFFFFFFFF
        if got != info.crc32:
            raise FormatError(f"section {_q(info.name)}: CRC-32 mismatch: manifest says 0x{info.crc32:08x}, data gives 0x{got:08x}")
        end = info.offset + info.length
    return Container(meta, (major, minor), flags, tuple(infos), data, size)


def _inflate(stored: memoryview, limit: int) -> memoryview:
    """Inflate a zlib-compressed manifest, refusing more than ``limit`` bytes of output (no zip bombs)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(stored, limit + 1)
    except zlib.error as e:
        raise FormatError(f"compressed manifest does not inflate: {e}") from None
    if len(out) > limit:
        raise FormatError(f"compressed manifest inflates to more than max_manifest_bytes={limit}")
    if not d.eof or d.unused_data or d.unconsumed_tail:
        raise FormatError("compressed manifest is truncated or followed by extra bytes")
    return memoryview(out)


def _reject_constant(name: str) -> Any:
    raise FormatError(f"manifest contains {name}, which is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(f"manifest number {text[:40]!r} overflows a float")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise FormatError(f"manifest has a duplicate JSON key {k[:80]!r}")
            seen.add(k)
    return out


def _load_json(raw: memoryview) -> Any:
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"manifest is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant,
                          parse_float=_parse_float)
    except FormatError:
        raise
    except RecursionError:
        raise FormatError("manifest JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int("9" * 5000) past the int-digits limit
        raise FormatError(f"manifest is not valid JSON: {e}") from None


def _is_int(x: Any) -> bool:
    return type(x) is int  # not bool


def _check_manifest(m: Any, header_version: tuple[int, int]) -> tuple[dict, list[SectionInfo]]:
    strict = header_version[1] <= FORMAT_VERSION[1]  # a newer minor version may add keys; ignore them then
    if type(m) is not dict:
        raise FormatError(f"manifest must be a JSON object, got {_json_type(m)}")
    _check_keys(m, _MANIFEST_KEYS, "manifest", strict)
    if m["format"] != "dcc":
        raise FormatError(f"manifest 'format' is {_short(m['format'])}, expected \"dcc\"")
    v = m["version"]
    if type(v) is not list or len(v) != 2 or not all(_is_int(x) for x in v):
        raise FormatError(f"manifest 'version' must be [major, minor] integers, got {_short(v)}")
    if tuple(v) != header_version:
        raise FormatError(f"manifest says version {v[0]}.{v[1]} but the header says {header_version[0]}.{header_version[1]}")
    meta = m["meta"]
    if type(meta) is not dict:
        raise FormatError(f"manifest 'meta' must be a JSON object, got {_json_type(meta)}")
    _check_meta_for_read(meta)
    secs = m["sections"]
    if type(secs) is not list:
        raise FormatError(f"manifest 'sections' must be a JSON array, got {_json_type(secs)}")
    infos: list[SectionInfo] = []
    names: set[str] = set()
    for i, s in enumerate(secs):
        where = f"manifest sections[{i}]"
        if type(s) is not dict:
            raise FormatError(f"{where} must be a JSON object, got {_json_type(s)}")
        _check_keys(s, _SECTION_KEYS, where, strict)
        name = s["name"]
        if type(name) is not str or not name:
            raise FormatError(f"{where} 'name' must be a non-empty string, got {_short(name)}")
        _check_str_for_read(name, f"{where} 'name'")
        where = f"section {_q(name)}"
        if name in names:
            raise FormatError(f"duplicate section name {_q(name)}")
        names.add(name)
        for key in ("offset", "length", "crc32"):
            x = s[key]
            if not _is_int(x) or x < 0:
                raise FormatError(f"{where}: '{key}' must be a non-negative integer, got {_short(x)}")
        if s["crc32"] > 0xFFFFFFFF:
            raise FormatError(f"{where}: 'crc32' {s['crc32']} does not fit in 32 bits")
        infos.append(SectionInfo(name, s["offset"], s["length"], s["crc32"]))
    return meta, infos


def _check_keys(d: dict, expected: frozenset, where: str, strict: bool) -> None:
    missing = expected - d.keys()
    if missing:
        raise FormatError(f"{where} lacks key(s) {sorted(missing)}")
    if strict:
        extra = d.keys() - expected
        if extra:
            shown = sorted(k[:80] for k in extra)[:10]
            raise FormatError(f"{where} has unknown key(s) {shown}")


def _check_meta_for_read(meta: dict) -> None:
    """Depth limit and valid Unicode (no lone surrogates from ``\\ud800`` escapes), iteratively."""
    stack: list[tuple[Any, int]] = [(meta, 1)]
    while stack:
        value, depth = stack.pop()
        if type(value) is dict:
            if depth > MAX_META_DEPTH:
                raise FormatError(f"manifest 'meta' is nested deeper than {MAX_META_DEPTH} levels")
            for k, v in value.items():
                _check_str_for_read(k, "manifest 'meta' key")
                stack.append((v, depth + 1))
        elif type(value) is list:
            if depth > MAX_META_DEPTH:
                raise FormatError(f"manifest 'meta' is nested deeper than {MAX_META_DEPTH} levels")
            stack.extend((v, depth + 1) for v in value)
        elif type(value) is str:
            _check_str_for_read(value, "manifest 'meta' string")


def _check_str_for_read(s: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{where} {s[:40]!r} is not valid Unicode (lone surrogate escape)") from None


def _q(name: str) -> str:
    """repr of a name for an error message, bounded (names come from untrusted files)."""
    r = repr(name)
    return r if len(r) <= 80 else r[:77] + "..."


def _json_type(x: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(x), type(x).__name__)


def _short(x: Any) -> str:
    r = repr(x) if not isinstance(x, (dict, list)) else _json_type(x)
    return r if len(r) <= 60 else r[:57] + "..."


# --------------------------------------------------------------------------------------------------- arrays

ARRAY_DTYPES = ("uint8", "uint16", "int32", "int64", "float16", "float32", "bool")
"""dtype names :func:`pack_array` / :func:`unpack_array` accept; stored little-endian (bool: one byte, 0 or 1)."""

_KIND_TO_NAME = {np.dtype(n).kind + str(np.dtype(n).itemsize): n for n in ARRAY_DTYPES}
MAX_NDIM = 32
_NUMPY_MAX_BYTES = 2**62  # numpy refuses arrays whose nonzero-dims product * itemsize overflows intp


def pack_array(a: np.ndarray) -> tuple[bytes, dict]:
    """Serialize a numpy array for a section.

    Args:
        a: ``np.ndarray`` of any shape (0-d included) and any memory layout, dtype one of :data:`ARRAY_DTYPES`
            (either byte order).

    Returns:
        ``(buf, descr)``: ``buf`` = the elements in C order, little-endian (bool as bytes 0/1),
        ``len(buf) == a.size * itemsize`` bytes; ``descr = {"dtype": name, "shape": [int, ...]}`` (plain JSON,
        for the caller's ``meta``).

    Raises:
        TypeError: ``a`` is not an ndarray, or its dtype is not in the allowlist.
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"pack_array needs a numpy.ndarray, got {type(a).__name__}")
    name = _KIND_TO_NAME.get(a.dtype.kind + str(a.dtype.itemsize)) if a.dtype.fields is None else None
    if name is None:
        raise TypeError(f"dtype {a.dtype} is not storable; allowed: {', '.join(ARRAY_DTYPES)}")
    if name == "bool":
        buf = np.not_equal(np.ascontiguousarray(a).view(np.uint8), 0).tobytes(order="C")  # canonical 0/1
    else:
        buf = a.astype(np.dtype(name).newbyteorder("<"), copy=False).tobytes(order="C")
    return buf, {"dtype": name, "shape": [int(d) for d in a.shape]}


def unpack_array(buf: bytes | bytearray | memoryview, descr: Any, max_elems: int | None = None, *,
                 copy: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_array`, validating everything (``descr`` usually comes from an untrusted file).

    Args:
        buf: the section bytes.
        descr: ``{"dtype": name in ARRAY_DTYPES, "shape": [non-negative int, ...]}`` (at most 32 dims).
        max_elems: refuse arrays with more elements than this (``None``: only the ``len(buf)`` check).
        copy: ``True`` (default): a fresh writable array in native byte order. ``False``: a read-only
            little-endian view of ``buf`` (no copy).

    Returns:
        ``np.ndarray`` of ``descr["shape"]`` and ``descr["dtype"]``.

    Raises:
        FormatError: ``descr`` malformed (not a dict, unknown keys, dtype not allowed, shape not a list of
            non-negative ints, too many dims / elements), ``prod(shape) * itemsize != len(buf)``, or a bool
            byte other than 0/1.
    """
    if type(descr) is not dict:
        raise FormatError(f"array descriptor must be an object {{'dtype', 'shape'}}, got {_short(descr)}")
    if descr.keys() != {"dtype", "shape"}:
        raise FormatError(f"array descriptor keys must be exactly ['dtype', 'shape'], got {sorted(map(str, descr))[:10]}")
    name, shape = descr["dtype"], descr["shape"]
    if type(name) is not str or name not in ARRAY_DTYPES:
        raise FormatError(f"array dtype {_short(name)} is not allowed; allowed: {', '.join(ARRAY_DTYPES)}")
    if type(shape) not in (list, tuple) or len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
        raise FormatError(f"array shape must be a list of at most {MAX_NDIM} non-negative integers, got {_short(shape)}")
    dtype = np.dtype(name).newbyteorder("<")
    count, span = 1, 1
    for d in shape:
        count *= d
        span *= max(d, 1)
        if span * dtype.itemsize > _NUMPY_MAX_BYTES:
            raise FormatError(f"array shape {_short(shape)} is too large")
    if max_elems is not None and count > max_elems:
        raise FormatError(f"array shape {list(shape)} has {count} elements, more than the limit {max_elems}")
    try:
        view = memoryview(buf).cast("B")
    except TypeError as e:
        raise TypeError(f"buf must be a C-contiguous bytes-like object: {e}") from None
    if count * dtype.itemsize != view.nbytes:
        raise FormatError(
            f"array of shape {list(shape)} and dtype {name} needs {count * dtype.itemsize} bytes, buffer has {view.nbytes}"
        )
    if name == "bool":
        raw = np.frombuffer(view, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise FormatError("bool array contains bytes other than 0 and 1")
    arr = np.frombuffer(view, dtype=dtype).reshape(tuple(shape))
    if copy:
        arr = arr.astype(dtype.newbyteorder("="), copy=True)
    return arr
