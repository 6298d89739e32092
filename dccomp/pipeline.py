"""Pipelines as text: ``prune{sparsity=0.9},retrain{epochs=2},cluster{bits=5},huffman``.

Grammar (xDSL/MLIR style)::

    pipeline := item ("," item)*
    item     := NAME ( "{" [ option ("," option)* ] "}" )?
    option   := KEY "=" value
    value    := number | true | false | none | "quoted string" | bare-word | "[" values "]" | "{" KEY ":" value, ... "}"

``parse_pipeline`` resolves names through the registry (named pipelines expand in place);
``print_pipeline`` writes the canonical text back, so parse -> print -> parse is the identity.
"""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .errors import PipelineSyntaxError
from .pass_infra import Pass

__all__ = ["parse_pipeline", "print_pipeline", "parse_items", "format_value"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]*")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|inf|nan)(?![A-Za-z0-9_\-.*])")
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.*+?^$|\\/]*")


class _Parser:
    def __init__(self, text: str):
        self.s, self.i = text, 0

    def error(self, what: str) -> PipelineSyntaxError:
        return PipelineSyntaxError(f"{what} at position {self.i} of pipeline {self.s!r}\n"
                                   f"  {self.s}\n  {' ' * self.i}^")

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1

    def peek(self) -> str:
        self.ws()
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.error(f"expected {ch!r}")
        self.i += 1

    def match(self, rx: re.Pattern) -> str | None:
        self.ws()
        m = rx.match(self.s, self.i)
        if not m:
            return None
        self.i = m.end()
        return m.group(0)

    def items(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        if not self.peek():
            return out
        while True:
            name = self.match(_NAME)
            if not name:
                raise self.error("expected a pass name")
            opts: dict[str, Any] = {}
            if self.peek() == "{":
                self.i += 1
                if self.peek() != "}":
                    while True:
                        key = self.match(_NAME)
                        if not key:
                            raise self.error("expected an option name")
                        if key in opts:
                            raise self.error(f"option {key!r} given twice")
                        self.expect("=")
                        opts[key] = self.value()
                        if self.peek() != ",":
                            break
                        self.i += 1
                self.expect("}")
            out.append((name, opts))
            if self.peek() != ",":
                break
            self.i += 1
        if self.peek():
            raise self.error("unexpected text")
        return out

    def value(self) -> Any:
        ch = self.peek()
        if ch == '"':
            try:
                v, end = json.JSONDecoder().raw_decode(self.s, self.i)
            except ValueError:
                raise self.error("unterminated or invalid quoted string") from None
            self.i = end
            return v
        if ch == "[":
            self.i += 1
            vals = []
            if self.peek() != "]":
                vals.append(self.value())
                while self.peek() == ",":
                    self.i += 1
                    vals.append(self.value())
            self.expect("]")
            return vals
        if ch == "{":
            self.i += 1
            d: dict[str, Any] = {}
            if self.peek() != "}":
                while True:
                    key = self.value()
                    if not isinstance(key, str):
                        raise self.error("mapping keys must be strings")
                    self.expect(":")
                    d[key] = self.value()
                    if self.peek() != ",":
                        break
                    self.i += 1
            self.expect("}")
            return d
        num = self.match(_NUMBER)
        if num is not None:
            if re.fullmatch(r"[-+]?\d+", num):
                return int(num)
            return float(num)
        word = self.match(_BARE)
        if word is None:
            raise self.error("expected a value")
        return {"true": True, "false": False, "none": None}.get(word, word)


def parse_items(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse pipeline text into ``[(name, options)]`` without resolving names.

    Raises:
        PipelineSyntaxError: with the position and a caret under the offending character.
    """
    if not isinstance(text, str):
        raise TypeError(f"a pipeline is a string or a list of passes, got {type(text).__name__}")
    return _Parser(text).items()


def parse_pipeline(text: str) -> list[Pass]:
    """Parse pipeline text into pass objects, expanding named pipelines (e.g. ``deep-compression``).

    Raises:
        PipelineSyntaxError: malformed text.
        RegistryError: an unknown pass name (the message lists the known ones).
        PassError: options a pass does not accept, or invalid option values.
    """
    from .registry import make_pass

    out: list[Pass] = []
    for name, opts in parse_items(text):
        out.extend(make_pass(name, opts))
    return out


def format_value(v: Any) -> str:
    """Canonical text of an option value (inverse of the value grammar)."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        if _BARE.fullmatch(v) and v not in ("true", "false", "none", "inf", "nan"):
            return v
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{format_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"option value {v!r} of type {type(v).__name__} has no pipeline text form")


def print_pipeline(passes: Sequence[Pass]) -> str:
    """Canonical pipeline text for ``passes``: options that differ from their defaults, in field order."""
    items = []
    for p in passes:
        opts = p.options()
        body = ",".join(f"{k}={format_value(v)}" for k, v in opts.items())
        items.append(p.name + (f"{{{body}}}" if body else ""))
    return ",".join(items)
