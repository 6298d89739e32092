"""The driver shared by the ``.dcc`` fuzzers (``bench/fuzz_container.py``, ``bench/fuzz_model_file.py``).

A fuzzer supplies its targets and mutators (through ``pick``), its oracle (``classify``) and the outcomes it
counts as bad; this module runs the cases, tallies the outcomes and prints the report. Any outcome named
``exception:...`` is bad as well.
"""
from __future__ import annotations

import argparse
import collections
import random
import time
from dataclasses import dataclass, field
from typing import Callable

Mutator = Callable[[random.Random, bytes], bytes]
# pick(rng) -> (original bytes, mutator name, mutator); mutators named "fixed:..." recompute the CRCs
Pick = Callable[[random.Random], tuple[bytes, str, Mutator]]
# classify(original, mutated, fixed_crc) -> (outcome, traceback or None)
Classify = Callable[[bytes, bytes, bool], tuple[str, str | None]]


@dataclass
class FuzzResult:
    counts: collections.Counter = field(default_factory=collections.Counter)
    per_mutator: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    failures: list = field(default_factory=list)  # (outcome, mutator, case seed, data, traceback)
    iterations: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0
    bad_outcomes: tuple = ()  # plus any "exception:..."

    def is_bad(self, outcome: str) -> bool:
        return outcome in self.bad_outcomes or outcome.startswith("exception:")

    @property
    def bad(self) -> int:
        return sum(n for k, n in self.counts.items() if self.is_bad(k))


def check_budget(iterations: int | None, seconds: float | None) -> None:
    if iterations is None and seconds is None:
        raise ValueError("give iterations or seconds")


def run_cases(pick: Pick, classify: Classify, bad_outcomes: tuple, iterations: int | None = None,
              seconds: float | None = None, seed: int = 0, max_failures: int = 20) -> FuzzResult:
    """Run cases until ``iterations`` cases or ``seconds`` elapsed (whichever first; at least one given).

    Case ``i`` draws everything from ``random.Random(seed * 1_000_003 + i)``, so a case seed reproduces it.
    """
    check_budget(iterations, seconds)
    res = FuzzResult(bad_outcomes=bad_outcomes)
    t0 = time.perf_counter()
    i = 0
    while (iterations is None or i < iterations) and (seconds is None or time.perf_counter() - t0 < seconds):
        case_seed = seed * 1_000_003 + i
        rng = random.Random(case_seed)
        original, name, fn = pick(rng)
        mutated = fn(rng, original)
        t = time.perf_counter()
        outcome, tb = classify(original, mutated, name.startswith("fixed:"))
        res.slowest_s = max(res.slowest_s, time.perf_counter() - t)
        res.counts[outcome] += 1
        res.per_mutator[name][outcome] += 1
        if res.is_bad(outcome) and len(res.failures) < max_failures:
            res.failures.append((outcome, name, case_seed, mutated, tb))
        i += 1
    res.iterations = i
    res.seconds = time.perf_counter() - t0
    return res


def main(argv: list[str] | None, doc: str, run_fuzz: Callable[..., FuzzResult], *, slowest: str,
         outcome_width: int, mutator_width: int, reproducer: Callable[[bytes], str]) -> int:
    """The fuzzers' command line: ``--seconds`` / ``--iterations`` / ``--seed``, a report, exit status 1 on
    any bad outcome. ``doc`` is the fuzzer's module docstring (its first paragraph is the description);
    ``reproducer(data)`` is the shell command printed for each failure."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="time budget (default 30)")
    ap.add_argument("--iterations", type=int, default=None, help="stop after this many cases")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    res = run_fuzz(args.iterations, None if args.iterations else args.seconds, args.seed)
    print(f"{res.iterations} cases in {res.seconds:.1f} s ({res.iterations / max(res.seconds, 1e-9):.0f}/s), "
          f"slowest {slowest} {res.slowest_s * 1e3:.2f} ms")
    print("outcomes:")
    for k, n in res.counts.most_common():
        print(f"  {k:{outcome_width}s} {n}")
    print("per mutator:")
    for name in sorted(res.per_mutator):
        print(f"  {name:{mutator_width}s} " + ", ".join(f"{k}={n}" for k, n in res.per_mutator[name].most_common()))
    for outcome, name, case_seed, data, tb in res.failures:
        print(f"\nFAILURE {outcome} from {name} (case seed {case_seed}); reproduce with:")
        print(f"  {reproducer(data)}")
        if tb:
            print(tb)
    print(f"\n{'FAIL' if res.bad else 'OK'}: {res.bad} bad outcomes")
    return 1 if res.bad else 0
