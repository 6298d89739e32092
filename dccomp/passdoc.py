"""Pass options described from the pass classes themselves: name, type, default and a one-line meaning.

``dccomp passes`` prints this; nothing is kept in a separate table. The type and default come from the dataclass
fields (``typing.get_type_hints``); the meaning from ``field(metadata={"doc": ...})`` when a pass gives one, else
from the pass's docstring (its own or an inherited one): the clause that introduces the option, written as
``- ``name``: meaning``, ``name`` (meaning) or ``name``: meaning, or, failing that, the first clause that names
it (``distill=alpha`` in [0, 1] ...).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["OptionDoc", "describe_options", "type_text"]


@dataclass(frozen=True)
class OptionDoc:
    """One pass option: ``name``, ``type`` (annotation as text), ``default`` (pipeline-text form, ``"-"`` when
    required) and ``meaning`` (one line; empty when the pass documents none)."""

    name: str
    type: str
    default: str
    meaning: str


def type_text(tp: Any) -> str:
    """A type annotation as short text: ``float | None``, ``dict[str, Any]``, ``int``."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return " | ".join(type_text(t) for t in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if origin is not None:
        args = ", ".join(type_text(t) for t in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _clause(text: str, others: set[str], bracketed: bool = False) -> str:
    """``text`` up to the end of its clause: a ``;`` or sentence end, a bullet, or ``, ``other option``;
    brackets balanced (an unmatched closing bracket ends it; with ``bracketed``, only that does)."""
    depth, i = 0, 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif depth == 0 and not bracketed:
            if ch == ";" or text.startswith("\n- ", i) or re.match(r"\.(\s+[A-Z`]|\s*$)", text[i:]):
                break
            m = re.match(r",\s*(?:or\s+|and\s+)?``([A-Za-z_]\w*)", text[i:])
            if m and m.group(1) in others:
                break
        i += 1
    return text[:i]


def _tidy(s: str) -> str:
    s = re.sub(r":\w+:`([^`]*)`", r"\1", s)  # :data:`X` -> X
    s = re.sub(r"\s+", " ", s.replace("``", "")).strip()
    return re.sub(r"(,|,? or|,? and|\.)$", "", s).strip()


def _from_docstring(doc: str, name: str, others: set[str]) -> str:
    intro = list(re.finditer(rf"``{re.escape(name)}``", doc))
    for m in intro:  # "``name``: meaning" (a bullet or inline)
        if doc.startswith(":", m.end()):
            meaning = _tidy(_clause(doc[m.end() + 1:], others))
            if meaning:
                return meaning
    for m in intro:  # "``name`` (meaning)"
        paren = re.match(r" ?\(", doc[m.end():])
        if paren:
            meaning = _tidy(_clause(doc[m.end() + paren.end():], set(), bracketed=True))
            if meaning:
                return meaning
    for m in re.finditer(rf"``{re.escape(name)}(=[^`]*)?``", doc):  # the clause from a mention on
        meaning = _tidy(_clause(doc[m.end():], others))
        if meaning and not meaning.startswith(","):
            return _tidy(m.group(0) + " " + meaning)
    return ""


def describe_options(cls: type) -> list[OptionDoc]:
    """The options of pass class ``cls`` in field order (see the module docstring for where each part comes
    from). Raises ``TypeError`` if ``cls`` is not a dataclass."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a pass class (a dataclass)")
    from .pipeline import format_value

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: show them as written
        hints = {}
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    docs = [inspect.cleandoc(k.__doc__) for k in cls.__mro__ if k.__doc__ and k.__module__ != "dccomp.pass_infra"
            and k is not object]
    out = []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            default = format_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = format_value(f.default_factory())
        else:
            default = "-"
        meaning = str(f.metadata.get("doc", "")) or next(
            (m for m in (_from_docstring(d, f.name, names - {f.name}) for d in docs) if m), "")
        out.append(OptionDoc(f.name, type_text(hints.get(f.name, f.type)), default, meaning))
    return out
