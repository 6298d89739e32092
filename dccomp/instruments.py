"""Instruments: observers the driver attaches to the pass manager (TVM's PassInstrument). Passes never print;
timing, IR dumps, size tracking and progress bars live here."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Timing", "DumpIR", "SizeTracker", "Progress", "StageLog"]


class Timing:
    """Records the wall time of each pass in seconds: ``.rows = [(pass_key, seconds)]``."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, float]] = []

    def run_after_pass(self, p, ir, ctx, seconds: float) -> None:
        self.rows.append((ctx.current, seconds))


class DumpIR:
    """Writes the IR's text form before the pipeline and after each pass to ``folder/NNN_pass.txt``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.n = 0

    def _write(self, name: str, ir) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{self.n:03d}_{name}.txt").write_text(str(ir) + "\n")
        self.n += 1

    def run_before_pipeline(self, ir, ctx) -> None:
        self._write("input", ir)

    def run_after_pass(self, p, ir, ctx, seconds: float) -> None:
        self._write(p.name, ir)


class SizeTracker:
    """Model size after each pass: the bytes of the ``.dcc`` file dccomp would write at that point
    (``.rows = [(pass_key, bytes, ratio vs dense float32)]``)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, float]] = []

    def _add(self, key: str, ir) -> None:
        from .format import file_nbytes

        n = file_nbytes(ir)
        self.rows.append((key, n, ir.dense_nbytes() / n))

    def run_before_pipeline(self, ir, ctx) -> None:
        self._add("input", ir)

    def run_after_pass(self, p, ir, ctx, seconds: float) -> None:
        self._add(ctx.current, ir)


class Progress:
    """tqdm progress bars for passes that iterate (retraining epochs)."""

    def __init__(self, **tqdm_kwargs: Any):
        # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI)
        self.kwargs = {"leave": False, "dynamic_ncols": True, "disable": None, **tqdm_kwargs}
        self.current = ""

    def run_before_pass(self, p, ir, ctx) -> None:
        self.current = ctx.current

    def progress(self, iterable: Iterable, *, total: int | None = None, desc: str = "") -> Iterable:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=f"{self.current} {desc}".strip(), **self.kwargs)


class StageLog:
    """One line per pass on ``stream`` (stderr by default): which pass starts, and when it ends, its seconds and
    what it recorded (e.g. accuracy). For command-line runs without progress bars."""

    def __init__(self, stream=None):
        import sys

        self.stream = stream or sys.stderr

    def run_before_pass(self, p, ir, ctx) -> None:
        print(f"[dccomp] {ctx.current}: {p} ...", file=self.stream, flush=True)

    def run_after_pass(self, p, ir, ctx, seconds: float) -> None:
        rec = ctx.records.get(ctx.current, {})
        acc = f", eval accuracy {100 * rec['eval_accuracy']:.2f}%" if "eval_accuracy" in rec else ""
        print(f"[dccomp] {ctx.current}: done in {seconds:.1f} s{acc}", file=self.stream, flush=True)
