"""10,000-case mutation fuzz of real small model files through ``dccomp.load`` (raw mutations with stale CRCs,
and model-level manifest/section mutations with the CRCs recomputed). Longer runs:
``python bench/fuzz_model_file.py --seconds N``."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path


BENCH = Path(__file__).resolve().parent.parent / "bench" / "fuzz_model_file.py"


def _load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_model_file", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_model_file"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_fuzz_10000_model_file_mutations():
    fz = _load_fuzzer()
    t0 = time.perf_counter()
    res = fz.run_fuzz(iterations=10_000, seconds=60, seed=0)
    elapsed = time.perf_counter() - t0
    assert res.iterations == 10_000, f"only {res.iterations} cases in the time budget"
    assert elapsed < 60
    report = "\n".join(f"{o} from {m} (seed {s}):\n{tb}" for o, m, s, _, tb in res.failures)
    assert res.bad == 0, report
    assert res.slowest_s < 2.0, f"a single case took {res.slowest_s:.2f} s"
    # the mix really exercised both layers: container rejections and model-level decoding
    for name in fz.RAW:
        assert res.per_mutator[name]["format_error"] > 0, name
    for name in fz.FIXED:
        assert res.per_mutator[name]["format_error"] > 50, name
        assert res.per_mutator[name]["ok_loaded"] > 0, name
    assert res.counts["ok_other_architecture"] > 0


def test_fuzzer_flags_undetected_corruption_and_crashes(monkeypatch):
    """The oracle itself: a reader that accepts anything, or crashes, is reported."""
    fz = _load_fuzzer()
    files = fz.sample_files()
    good = files[0]
    model = fz.make_model()
    assert fz.classify(good, good, False, model)[0] == "unchanged"
    assert fz.classify(good, good[:-1], False, model)[0] == "format_error"
    real_load = fz.dccomp.load
    monkeypatch.setattr(fz.dccomp, "load", lambda data, model=None: real_load(good, model))
    assert fz.classify(good, good[:-1], False, model)[0] == "undetected_corruption"

    def crash(data, model=None):
        raise IndexError("boom")
    monkeypatch.setattr(fz.dccomp, "load", crash)
    outcome, tb = fz.classify(good, good[:-1], True, model)
    assert outcome == "exception:decode:IndexError" and "boom" in tb
