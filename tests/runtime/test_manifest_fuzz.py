"""Property: a real bundle whose manifest and golden file are mutated at random (types, values, paths,
deletions), resealed or not, either opens and runs its pre-generation checks, or fails with BundleError:
never another exception (a KeyError, a ZeroDivisionError, a numpy error deep inside generation).

What is run for each case is everything ``ldm-run verify`` does before the first component call: open the
bundle (seal, schema, paths, hashes), build the pipeline (sampler, tokenizer, guidance), read the golden
vectors, list what is missing, and check the golden request against the bundle.

The cases are the same on every run (``derandomize``), so CI is reproducible; to search further, run with
``LDM_FUZZ_RANDOM=1 LDM_FUZZ_EXAMPLES=30000``: a failure prints the ``@reproduce_failure`` line that replays
it, and each one found becomes a case in tests/runtime/test_bundle.py.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ldm_runtime.bundle import INTEGRITY, MANIFEST, integrity_seal, open_bundle, sha256_file
from ldm_runtime.errors import BundleError
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.verify import golden_request, load_golden, missing_golden

EXAMPLES = int(os.environ.get("LDM_FUZZ_EXAMPLES", 2000))
RANDOM = os.environ.get("LDM_FUZZ_RANDOM") == "1"
GOLDEN = "golden/golden.npz"

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([2**63, -(2**63), 10**30, 1000, 4096]),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), st.sampled_from([0.0, -0.0, 1e-300, 1e300]),
    st.text(max_size=8), st.sampled_from(["../../etc/passwd", "/etc/passwd", "unet.onnx", "golden/golden.npz",
                                          "tokenizer/tokenizer.json", "", ".", "a/../b", "float16", "text", "class"]),
    st.lists(st.integers(-2, 70), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(obj, prefix=()):
    """Every (path, value) of a JSON tree, containers included."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(manifest: dict, data) -> dict:
    m = json.loads(json.dumps(manifest))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = [p for p, _ in _paths(m) if p and p[0] != INTEGRITY]
        path = data.draw(st.sampled_from(paths), label="path")
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["delete", "replace", "retype"]), label="action")
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "retype":
            old = parent[path[-1]]
            parent[path[-1]] = [old] if not isinstance(old, list) else {"x": old}
        else:
            parent[path[-1]] = data.draw(ODD_VALUES, label="value")
    return m


def _mutate_golden(arrays: dict[str, np.ndarray], data) -> bytes:
    arrays = dict(arrays)
    keys = sorted(arrays)
    for _ in range(data.draw(st.integers(1, 2), label="golden mutations")):
        key = data.draw(st.sampled_from(keys), label="golden key")
        action = data.draw(st.sampled_from(["drop", "shape", "dtype", "truncate"]), label="golden action")
        if action == "drop":
            arrays.pop(key, None)
        elif action == "shape" and key in arrays:
            arrays[key] = arrays[key].reshape(-1)[: max(1, arrays[key].size // 2)]
        elif action == "dtype" and key in arrays:
            arrays[key] = arrays[key].astype(np.float64 if arrays[key].dtype != np.float64 else np.int8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    raw = buf.getvalue()
    return raw[: len(raw) // 2] if action == "truncate" else raw


def _exercise(root: Path) -> None:
    bundle = open_bundle(root)
    pipeline = Pipeline(bundle, Components(bundle))
    golden = load_golden(bundle)
    missing_golden(bundle.manifest, golden)
    golden_request(pipeline, golden)


@pytest.fixture(scope="module")
def pristine(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "b"
    shutil.copytree(tiny_bundle, root)
    manifest = json.loads((root / MANIFEST).read_text())
    with np.load(root / GOLDEN) as z:
        arrays = {k: z[k] for k in z.files}
    return root, manifest, arrays, (root / GOLDEN).read_bytes()


def test_the_unmutated_bundle_passes_the_exercise(pristine):
    _exercise(pristine[0])


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not RANDOM,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_bundles_fail_only_with_bundle_error(pristine, data):
    root, manifest, arrays, golden_bytes = pristine
    m = _mutate(manifest, data) if data.draw(st.booleans(), label="mutate manifest") else json.loads(json.dumps(manifest))
    golden = _mutate_golden(arrays, data) if data.draw(st.integers(0, 3), label="golden?") == 0 else golden_bytes
    (root / GOLDEN).write_bytes(golden)
    if golden is not golden_bytes and isinstance(m.get("files"), dict):
        m["files"][GOLDEN] = sha256_file(root / GOLDEN)  # a consistent but damaged golden file
    if data.draw(st.integers(0, 4), label="reseal?") > 0:
        try:
            m[INTEGRITY] = integrity_seal(m)
        except (TypeError, ValueError):  # a key that JSON cannot sort against the others: left unsealed
            pass
    (root / MANIFEST).write_text(json.dumps(m))
    try:
        _exercise(root)
    except BundleError:
        pass
    finally:
        (root / MANIFEST).write_text(json.dumps(manifest))
        (root / GOLDEN).write_bytes(golden_bytes)
