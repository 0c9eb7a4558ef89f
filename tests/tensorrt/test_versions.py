"""TensorRT versions and the table of API gates between 10.3 and 11.x."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ldm_runtime
import ldm_export
from ldm_runtime.errors import UserError
from ldm_runtime.tensorrt.versions import (API_GATES, MINIMUM, TrtVersion, check_supported, deprecated, gates_for,
                                           has)

SUPPORTED = ("10.3.0.30", "10.8.0.43", "10.14.1.48", "11.0.0.1", "11.5.0")   # JetPack 6.1 … latest
TRT_MODULES = sorted(Path(ldm_runtime.__file__).parent.glob("tensorrt/*.py")) + [
    Path(ldm_runtime.__file__).parent / "runners" / "tensorrt.py"] + sorted(
    Path(ldm_export.__file__).parent.glob("targets/tensorrt/*.py"))


@pytest.mark.parametrize("text, parsed", [("10.3.0.30", (10, 3, 0, 30)), ("10.3", (10, 3, 0, 0)),
                                          ("11.2.0", (11, 2, 0, 0)), ("10.13.3.9+cuda12.9", (10, 13, 3, 9))])
def test_parse(text, parsed):
    assert TrtVersion.parse(text) == TrtVersion(*parsed)


def test_order_is_numeric_not_lexical():
    assert TrtVersion.parse("10.10") > TrtVersion.parse("10.9") > TrtVersion.parse("10.3.0.30") > MINIMUM
    assert sorted(["11.0", "10.14", "10.3", "10.9"], key=TrtVersion.parse) == ["10.3", "10.9", "10.14", "11.0"]


def test_garbage_and_too_old_are_one_line_user_errors():
    with pytest.raises(UserError, match="not MAJOR.MINOR"):
        TrtVersion.parse("ten")
    with pytest.raises(UserError, match="expected 10.3 or newer") as e:
        check_supported("8.6.1")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("gate, present, absent", [
    ("precision_flags", "10.3", "11.0"),                 # FP16/INT8 builder flags gone in 11
    ("int8_calibrators", "10.14", "11.0"),
    ("context_without_device_memory", "10.9", "11.0"),
    ("device_memory_size_v1", "10.3", "11.2"),
    ("device_memory_v2", "10.1", "10.0"),               # V2 memory APIs from 10.1
    ("hardware_compat_same_cc", "10.9", "10.8"),
    ("always_strongly_typed", "11.0", "10.16"),
    ("explicit_batch_flag", "10.3", "11.0"),
])
def test_gate_boundaries(gate, present, absent):
    assert has(gate, present) and not has(gate, absent)


def test_strongly_typed_flag_exists_everywhere_and_is_ignored_from_11():
    assert all(has("strongly_typed_flag", v) for v in SUPPORTED)
    assert [deprecated("strongly_typed_flag", v) for v in SUPPORTED] == [False, False, False, True, True]


def test_apis_this_project_relies_on_exist_in_every_supported_version():
    needed = ("user_managed_allocation", "device_memory_v2", "refit_flag", "refit_individual",
              "onnx_parser_refitter", "progress_monitor", "strongly_typed_flag")
    for v in SUPPORTED:
        gates = gates_for(v)
        assert all(gates[g] for g in needed), (v, {g: gates[g] for g in needed})


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_no_module_touches_an_api_some_supported_version_lacks():
    """The complement of mypy (whose stubs are 10.13's): an attribute that a supported version lacks
    (FP16 flags, calibrators, create_execution_context_without_device_memory, ...) appears nowhere."""
    partial = {name: g for name, g in API_GATES.items() if not all(g.applies(TrtVersion.parse(v)) for v in SUPPORTED)}
    assert {"precision_flags", "context_without_device_memory", "int8_calibrators"} <= set(partial)
    used = set()
    for path in TRT_MODULES:
        used |= {_dotted(n) for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    for name, gate in partial.items():
        if name == "hardware_compat_same_cc":
            continue  # reached by getattr(name) after has() (builder.check_build_options), never as an attribute
        hits = {u for u in used for a in gate.attrs if u == a or u.endswith("." + a)}
        assert not hits, f"{name}: {hits} is absent from some supported TensorRT"
