"""JUnit XML from ``ldm-run verify --junit`` (and the parity sweep's, in test_parity_sweep.py), checked with
xmlschema against the JUnit schema committed beside this file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.bundle_edits import rehash
from tests.conftest import ldm_run_blocked

XSD = Path(__file__).with_name("junit.xsd")


@pytest.fixture(scope="module")
def schema():
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is not installed (the dev extra has it)")
    return xmlschema.XMLSchema(XSD)


def validate(schema, path: Path) -> ET.Element:
    schema.validate(str(path))
    return ET.parse(path).getroot()


def test_the_schema_rejects_what_ci_readers_reject(schema, tmp_path):
    """The validator is not vacuous: a case without a name, or a count that is not a number, is refused."""
    bad = [
        '<testsuites><testsuite name="s" tests="1" failures="0" errors="0"><testcase classname="c"/></testsuite>'
        "</testsuites>",
        '<testsuites><testsuite name="s" tests="one" failures="0" errors="0"/></testsuites>',
        '<testsuites><testsuite name="s" tests="1" failures="1" errors="0"><testcase name="a" classname="c">'
        "<failure/><error/></testcase></testsuite></testsuites>",
    ]
    for text in bad:
        assert not schema.is_valid(text), text


def test_verify_junit_has_a_case_per_check(tiny_bundle, schema, tmp_path):
    out = tmp_path / "verify.xml"
    r = subprocess.run(ldm_run_blocked("verify", str(tiny_bundle), "--junit", str(out)), capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    root = validate(schema, out)
    checks = [line.split("  ")[0] for line in r.stdout.splitlines()[1:-1] if line.strip()]
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == checks and len(cases) >= 6
    assert root.get("tests") == str(len(cases)) and root.get("failures") == "0"
    assert root.find("testsuite/properties/property[@name='precision']").get("value") == "fp32"
    assert all(c.find("failure") is None for c in cases)


def test_verify_junit_failure_carries_the_figures(tiny_bundle, schema, tmp_path):
    root_dir = tmp_path / "b"
    shutil.copytree(tiny_bundle, root_dir)
    golden = root_dir / "golden" / "golden.npz"
    with np.load(golden) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["unet/out/model_output"] = arrays["unet/out/model_output"] * 1.01
    np.savez_compressed(golden, **arrays)
    rehash(root_dir, "golden/golden.npz")
    out = tmp_path / "verify.xml"
    r = subprocess.run(ldm_run_blocked("verify", str(root_dir), "--junit", str(out)), capture_output=True, text=True)
    assert r.returncode == 1
    root = validate(schema, out)
    failed = [c for c in root.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["unet"] and root.get("failures") == "1"
    message = failed[0].find("failure").get("message")
    assert "rel_l2=" in message and "limit rel_l2 ≤" in message


def test_junit_file_is_checked_before_any_work(tiny_bundle, tmp_path):
    r = subprocess.run(ldm_run_blocked("verify", str(tiny_bundle), "--junit", str(tmp_path / "no" / "r.xml")),
                       capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and r.stdout == ""
    r = subprocess.run([sys.executable, "-m", "ldm_runtime.cli", "verify", str(tiny_bundle), "--junit",
                        str(tmp_path / "r.txt")], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown file type" in r.stderr
