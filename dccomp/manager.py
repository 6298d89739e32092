"""The pass manager: runs passes in the given order, checks requirements, verifies, notifies instruments.

Each pass runs on a clone of the IR, so a failing pass leaves the previous IR as it was. Failures name the
failing pass and the passes that ran before it (the reproducer MLIR writes, as text).
"""
from __future__ import annotations

import time
from typing import Sequence

from .errors import DccompError, PassError, VerificationError
from .ir import IR
from .pass_infra import Pass, PassContext

__all__ = ["PassManager", "resolve_passes"]


def resolve_passes(passes: str | Pass | Sequence[Pass | str]) -> list[Pass]:
    """Normalize ``passes`` (pipeline text, a pass, or a list of passes and/or pipeline texts) to pass objects."""
    from .pipeline import parse_pipeline

    if isinstance(passes, str):
        return parse_pipeline(passes)
    if isinstance(passes, Pass):
        return [passes]
    if not isinstance(passes, (list, tuple)):
        raise TypeError("passes must be a pipeline string (e.g. 'prune{sparsity=0.9},cluster{bits=5},huffman'), "
                        f"a dccomp.Pass, or a list of them; got {type(passes).__name__}")
    out: list[Pass] = []
    for p in passes:
        if isinstance(p, str):
            out.extend(parse_pipeline(p))
        elif isinstance(p, Pass):
            out.append(p)
        else:
            raise TypeError(f"passes must be dccomp.Pass objects or pipeline strings, got {type(p).__name__}")
    return out


class PassManager:
    """Runs ``passes`` in order.

    Args:
        passes: pass objects (see :func:`resolve_passes`).
        verify: run :func:`dccomp.verify.verify` on the input IR and after every pass.
        clone: run each pass on a deep copy (the default), so a failure leaves the input IR untouched.
    """

    def __init__(self, passes: str | Sequence[Pass | str], *, verify: bool = False, clone: bool = True):
        self.passes = resolve_passes(passes)
        self.verify = verify
        self.clone = clone

    def _notify(self, ctx: PassContext, hook: str, *args) -> None:
        for inst in ctx.instruments:
            fn = getattr(inst, hook, None)
            if fn is not None:
                fn(*args)

    def run(self, ir: IR, ctx: PassContext | None = None) -> IR:
        """Run the pipeline on ``ir`` and return the final IR.

        Raises:
            PassError: a pass's requirements are unmet or it raised; the message names the pass, its position
                and the passes before it; the original exception is chained.
            VerificationError: the IR is invalid after a pass (with ``verify=True``); the pass is named.
        """
        from .pipeline import print_pipeline
        from .verify import verify

        ctx = ctx or PassContext()
        if self.verify:
            verify(ir)
        self._notify(ctx, "run_before_pipeline", ir, ctx)
        for i, p in enumerate(self.passes):
            before = print_pipeline(self.passes[:i]) or "(none)"
            where = f"pass #{i + 1} '{p.name}' ({p}); passes before it: {before}"
            why = p.check(ir)
            if why:
                raise PassError(f"cannot run {where}: {why}")
            ctx.current = f"{p.name}#{i + 1}"
            work = ir.clone() if self.clone else ir
            self._notify(ctx, "run_before_pass", p, work, ctx)
            t0 = time.perf_counter()
            try:
                result = p.run(work, ctx)
            except DccompError as e:
                raise PassError(f"{where} failed: {e}") from e
            except Exception as e:  # a bug or bad data inside a pass: name the pass, keep the cause chained
                raise PassError(f"{where} failed with {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - t0
            if self.verify:
                try:
                    verify(result.ir)
                except VerificationError as e:
                    raise VerificationError(e.layer, e.invariant, f"after {where}; {e.detail}") from e
            ir = result.ir
            self._notify(ctx, "run_after_pass", p, ir, ctx, seconds)
        self._notify(ctx, "run_after_pipeline", ir, ctx)
        return ir
