"""Make a mypy-readable copy of the ``tensorrt-stubs`` package (10.13.0.35.1).

The published stubs are generated from the pybind11 signatures and two of those are not Python:
a parameter named ``in`` (a keyword) and a parameter without a default after defaulted ones
(``add_scale_nd(..., power: Weights = None, channel_axis: int)``). This script copies the stub
files (``tensorrt/``, ``tensorrt_bindings/``) from site-packages into a folder of ours and
fixes those two things, line by line, until every file parses; site-packages is never touched.

One more fix keeps the stubs' return types: the modules define ``bool: DataType`` (TensorRT's
``trt.bool`` data type), which shadows the builtin inside the stubs, so every ``-> bool`` there
would be an invalid type (silently ``Any``). Annotations that say ``bool`` become ``builtins.bool``. Run it as ``python tests/tensorrt/patch_stubs.py OUT_DIR``; the type-check test calls
:func:`patch_stubs` itself.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from importlib import util
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")
KEYWORD_PARAM = re.compile(r"(?<=[(,] )in(?=: )|(?<=\()in(?=: )")


def find_stubs() -> Path | None:
    """The site-packages folder holding the tensorrt-stubs files, or None when they are not installed."""
    for entry in sys.path:
        if (Path(entry) / "tensorrt_bindings" / "tensorrt.pyi").is_file():
            return Path(entry)
    spec = util.find_spec("tensorrt_bindings")
    return Path(spec.origin).parent.parent if spec and spec.origin else None


def _split_params(params: str) -> list[str]:
    """Split a parameter list at its top-level commas (brackets nest: ``dict[str, int]``)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(params):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(params[start:i])
            start = i + 1
    out.append(params[start:])
    return out


def _fix_default_order(line: str) -> str:
    """Give ``= ...`` to each parameter that follows a defaulted one without a default of its own."""
    m = re.match(r"(\s*def \w+\()(.*)(\) -> .*:\s*)$", line)
    if not m:
        return line
    params = _split_params(m.group(2))
    seen_default, fixed = False, []
    for p in params:
        name = p.strip()
        if "=" in name:
            seen_default = True
        elif seen_default and name and not name.startswith("*"):
            p = p + " = ..."
        fixed.append(p)
    return m.group(1) + ",".join(fixed) + m.group(3)


BOOL_ANNOTATION = re.compile(r"(?<=[\[(,:>] )bool\b|(?<=\[)bool\b")
BOOL_NAME = re.compile(r"^\s*bool\s*:")


def _builtin_bool(text: str) -> str:
    """``bool`` in annotations -> ``builtins.bool`` (the module-level ``bool: DataType`` stays)."""
    lines = [BOOL_ANNOTATION.sub("builtins.bool", ln)
             if ("def " in ln or ln.startswith("    ")) and not BOOL_NAME.match(ln) else ln
             for ln in text.splitlines(keepends=True)]
    out = "".join(lines)
    return out.replace("from __future__ import annotations\n", "from __future__ import annotations\nimport builtins\n", 1)


def _fix_file(text: str, name: str) -> str:
    """Apply the two fixes to the lines that fail to parse, until the file parses."""
    lines = text.splitlines(keepends=True)
    for _ in range(len(lines)):
        try:
            ast.parse("".join(lines), filename=name)
            return "".join(lines)
        except SyntaxError as e:
            i = (e.lineno or 1) - 1
            new = _fix_default_order(KEYWORD_PARAM.sub("in_", lines[i]))
            if new == lines[i]:
                raise RuntimeError(f"{name}:{i + 1}: a syntax error this script does not know how to fix: "
                                   f"{e.msg}: {lines[i].strip()}") from e
            lines[i] = new
    raise RuntimeError(f"{name}: still does not parse")


def patch_stubs(out_dir: Path, site: Path | None = None) -> Path:
    """Copy the stubs into ``out_dir`` with the fixes; returns ``out_dir`` (a MYPYPATH entry)."""
    site = site or find_stubs()
    if site is None:
        raise FileNotFoundError("tensorrt-stubs are not installed (pip install --no-deps tensorrt-stubs==10.13.0.35.1)")
    out_dir = Path(out_dir)
    for pkg in PACKAGES:
        shutil.rmtree(out_dir / pkg, ignore_errors=True)
        (out_dir / pkg).mkdir(parents=True)
        for src in sorted((site / pkg).glob("*.pyi")):
            fixed = _builtin_bool(_fix_file(src.read_text(encoding="utf-8"), src.name))
            ast.parse(fixed, filename=src.name)  # the bool rewrite must keep it Python
            (out_dir / pkg / src.name).write_text(fixed, encoding="utf-8")
    return out_dir


if __name__ == "__main__":
    print(patch_stubs(Path(sys.argv[1])))
