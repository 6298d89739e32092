"""Pipeline text (parse -> print -> parse), the registry (entry points, decorator, duplicates), custom passes."""
import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dccomp
from dccomp import PassError, PipelineSyntaxError, RegistryError
from dccomp.models import LeNet300100
from dccomp.pipeline import format_value, parse_items, parse_pipeline, print_pipeline
from dccomp.registry import available_passes, get_pass, refresh_entry_points, register_pass


def test_builtin_passes_come_from_entry_points():
    names = available_passes()
    for n in ("prune", "retrain", "cluster", "entropy-code", "huffman", "ans", "deep-compression"):
        assert n in names
    assert get_pass("prune").__module__ == "dccomp.passes.prune"


def test_parse_print_parse_example():
    text = "prune{sparsity=0.9},retrain{epochs=2},cluster{bits=5},retrain{epochs=1},huffman"
    passes = parse_pipeline(text)
    assert [p.name for p in passes] == ["prune", "retrain", "cluster", "retrain", "huffman"]
    assert passes[0].sparsity == 0.9 and passes[2].bits == 5
    # canonical text omits options left at their defaults (retrain's epochs=1)
    assert print_pipeline(passes) == text.replace("retrain{epochs=1}", "retrain")
    assert parse_pipeline(print_pipeline(passes)) == passes


def test_named_pipeline_expands():
    passes = parse_pipeline("deep-compression")
    assert [p.name for p in passes][-1] == "huffman"
    assert "cluster" in [p.name for p in passes]


bare = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in ("true", "false", "none", "inf", "nan"))
scalars = (st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False, width=64)
           | st.booleans() | st.none() | st.text(max_size=8) | bare)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                      max_leaves=6)
items = st.lists(st.tuples(st.from_regex(r"[a-z][a-z\-]{0,8}", fullmatch=True),
                           st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), values, max_size=3)),
                 min_size=1, max_size=4)


def _text(its):
    return ",".join(n + ("{" + ",".join(f"{k}={format_value(v)}" for k, v in o.items()) + "}" if o else "")
                    for n, o in its)


@settings(max_examples=200, deadline=None)
@given(items)
def test_parse_print_parse_property(its):
    parsed = parse_items(_text(its))
    assert parsed == [(n, o) for n, o in its]
    assert parse_items(_text(parsed)) == parsed


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 1), st.integers(1, 8), st.sampled_from(["linear", "density", "kmeans++"]))
def test_pass_objects_round_trip(sparsity, bits, init):
    text = f"prune{{sparsity={sparsity!r}}},cluster{{bits={bits},init={format_value(init)}}},ans"
    passes = parse_pipeline(text)
    assert parse_pipeline(print_pipeline(passes)) == passes


@pytest.mark.parametrize("bad, where", [("prune{sparsity=0.9", "expected '}'"), ("prune{=1}", "option name"),
                                        ("prune,,cluster", "pass name"), ("prune{sparsity=0.9,sparsity=0.8}", "twice"),
                                        ("cluster{bits=[1,}", "expected a value")])
def test_syntax_errors_point_at_the_problem(bad, where):
    with pytest.raises(PipelineSyntaxError, match=where) as e:
        parse_pipeline(bad)
    assert "^" in str(e.value)


def test_unknown_pass_lists_known_ones():
    with pytest.raises(RegistryError, match="unknown pass 'prnue'.*prune"):
        parse_pipeline("prnue{sparsity=0.9}")


def test_unknown_option_and_bad_value():
    with pytest.raises(PassError, match="no option.*spars.*options are"):
        parse_pipeline("prune{spars=0.9}")
    with pytest.raises(PassError, match="sparsity must be a number in \\[0, 1\\]"):
        parse_pipeline("prune{sparsity=1.5}")
    with pytest.raises(PassError, match="bits must be an integer"):
        parse_pipeline("cluster{bits=0}")


def test_custom_pass_in_under_30_lines():
    # --- the user's code: a custom pass registered in-process and run from a pipeline string -------------
    @register_pass
    @dataclass(frozen=True)
    class ZeroSmallest(dccomp.Pass):
        """Zero the `count` smallest-magnitude weights of each layer (a toy pruning rule)."""

        name = "zero-smallest"
        count: int = 10

        def run(self, ir, ctx):
            for w in ir.weights.values():
                p = ir.param(w.name)
                keep = torch.ones(p.numel(), dtype=torch.bool)
                keep[p.detach().abs().flatten().argsort()[: self.count]] = False
                w.mask = keep.view_as(p) & (w.mask if w.mask is not None else True)
                with torch.no_grad():
                    p.mul_(w.mask)
            return dccomp.PassResult(ir, True)
    # ---------------------------------------------------------------------------------------------------
    compiled = dccomp.compile(LeNet300100(), "zero-smallest{count=25},cluster{bits=4},huffman", verify=True)
    for w in compiled.ir.weights.values():
        assert int((~w.mask).sum()) == 25
    assert print_pipeline(parse_pipeline("zero-smallest{count=3}")) == "zero-smallest{count=3}"
    with pytest.raises(RegistryError, match="already registered"):
        register_pass(name="zero-smallest")(type("Other", (ZeroSmallest,), {}))


def test_duplicate_builtin_name_refused():
    @dataclass(frozen=True)
    class FakePrune(dccomp.Pass):
        name = "prune"

        def run(self, ir, ctx):
            return dccomp.PassResult(ir, False)

    with pytest.raises(RegistryError, match="'prune' is already registered"):
        register_pass(FakePrune)


def test_non_frozen_pass_refused():
    @dataclass
    class Mutable(dccomp.Pass):
        name = "mutable-pass"

    with pytest.raises(TypeError, match="frozen"):
        register_pass(Mutable)


def test_third_party_plugin_package_via_entry_points(tmp_path, monkeypatch):
    """A plugin installed as a distribution (dist-info with entry_points.txt) is found by name."""
    (tmp_path / "dccomp_plugin_demo.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import dccomp

        @dataclass(frozen=True)
        class Noop(dccomp.Pass):
            """Does nothing."""
            name = "demo-noop"
            tag: str = "x"

            def run(self, ir, ctx):
                return dccomp.PassResult(ir, False)
    '''))
    info = tmp_path / "dccomp_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dccomp-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[dccomp.passes]\ndemo-noop = dccomp_plugin_demo:Noop\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    refresh_entry_points()
    try:
        assert "demo-noop" in available_passes()
        passes = parse_pipeline("demo-noop{tag=y},prune{sparsity=0.5}")
        assert passes[0].tag == "y" and type(passes[0]).__module__ == "dccomp_plugin_demo"
        dccomp.compile(LeNet300100(), passes)
        # a second distribution claiming the same name with another object is an error
        info2 = tmp_path / "other_plugin-0.1.dist-info"
        info2.mkdir()
        (info2 / "METADATA").write_text("Metadata-Version: 2.1\nName: other-plugin\nVersion: 0.1\n")
        (info2 / "entry_points.txt").write_text("[dccomp.passes]\ndemo-noop = other:Thing\n")
        refresh_entry_points()
        with pytest.raises(RegistryError, match="registered twice"):
            available_passes()
    finally:
        monkeypatch.undo()
        sys.modules.pop("dccomp_plugin_demo", None)
        refresh_entry_points()


@pytest.mark.parametrize("text,msg", [
    ("cluster{seed=abc}", r"option seed='abc' must be int, got str"),
    ("cluster{bits=4.5}", r"bits must be an integer in \[1, 16\], got 4.5"),
    ("prune{sparsity=0.5,steps=two}", r"steps must be an integer >= 1, got .two."),
    ("retrain{freeze_bn=maybe}", r"option freeze_bn='maybe' must be bool"),
    ("retrain{momentum=5}", r"momentum must be a number in \[0, 1\)"),
])
def test_option_types_are_checked_against_the_pass_fields(text, msg):
    """Found by a new user: wrong option types reached the pass and failed later with raw TypeErrors."""
    from dccomp.errors import PassError
    from dccomp.pipeline import parse_pipeline

    with pytest.raises(PassError, match=msg):
        parse_pipeline(text)
