"""``ldm-export parity B… --prompts FILE --seeds N``: fp32, fp16 and int8 bundles of the tiny model over 16
prompts × 2 seeds, the aggregate table, JUnit (xmlschema against tests/export/junit.xsd), the HTML report in a
real headless Chromium, exit 1 when a bundle is over tolerance, and Ray giving the local executor's numbers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ldm_export.calibration import load_prompts
from ldm_export.cli import main
from ldm_export.parity import ParitySweep, run_parity
from ldm_export.sweep.executor import one_torch_thread
from ldm_runtime.jsonio import dumps
from ldm_runtime.request import Request

XSD = Path(__file__).with_name("junit.xsd")
STEPS = ["--steps", "4", "--guidance", "7.5"]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# sixteen prompts\n" + "\n".join(load_prompts("general").prompts[:16]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bundles(tiny_quantized_bundles, tiny_sd, tmp_path_factory) -> dict[str, Path]:
    """fp32, fp16 and int8 bundles of the tiny model, all at its native 16x16 (the session's fp32 bundle serves
    32x32 and up)."""
    from dataclasses import replace

    from ldm_export.build import BuildConfig, build
    from ldm_export.golden import GOLDEN

    fp32 = tmp_path_factory.mktemp("fp32") / "fp32"
    build(BuildConfig(model=tiny_sd, out=fp32, golden=replace(GOLDEN, steps=4)))
    return {**tiny_quantized_bundles, "fp32": fp32}


@pytest.fixture(scope="module")
def sweep(bundles, tiny_sd, prompts_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    b = bundles
    r = CliRunner().invoke(main, ["parity", str(b["fp32"]), str(b["fp16"]), str(b["int8"]), "-r", str(tiny_sd),
                                  "--prompts", str(prompts_file), "--seeds", "2", *STEPS, "--json",
                                  "--junit", str(out / "parity.xml"), "--html", str(out / "report.html")])
    assert r.exit_code in (0, 1), r.output
    return r, json.loads(r.stdout), out


def test_the_sweep_covers_every_bundle_prompt_and_seed(sweep, bundles):
    r, report, _ = sweep
    assert [b["precision"] for b in report["bundles"]] == ["fp32", "fp16", "int8"]
    for b in report["bundles"]:
        assert len(b["cases"]) == 32 and {c["seed"] for c in b["cases"]} == {0, 1}
        assert len({c["prompt"] for c in b["cases"]}) == 16
        s = b["summary"]
        psnrs = [c["image_psnr_db"] for c in b["cases"]]
        assert s["image_psnr_db"]["worst"] == min(psnrs) and s["failed_cases"] == sum(not c["ok"] for c in b["cases"])
        assert len(s["step_rel_l2_percentiles"]["90"]) == 4
        assert s["step_rel_l2_percentiles"]["50"] <= s["step_rel_l2_percentiles"]["100"]
    assert r.exit_code == (0 if report["ok"] else 1)
    assert report["bundles"][0]["ok"], "the fp32 bundle must pass its tolerance tables"


def test_sweep_cases_are_run_parity_s(sweep, bundles, tiny_sd, prompts_file):
    """The tasks' cases are those of the one-bundle comparison run in one loop (the same torch thread count)."""
    _, report, _ = sweep
    prompts = tuple(load_prompts(str(prompts_file)).prompts[:2])
    for k, precision in enumerate(("fp32", "int8")):
        with one_torch_thread():
            alone = run_parity(ParitySweep(bundle=bundles[precision], reference=tiny_sd,
                                           prompts=prompts, seeds=(1,), base=Request(steps=4, guidance_scale=7.5)))
        got = report["bundles"][2 * k]["cases"][16:18]   # seed 1: the second half
        assert json.loads(dumps(alone.cases)) == got   # the report's strict JSON (an identical image: "inf")


def test_junit_has_a_suite_per_bundle_and_validates(sweep):
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is not installed (the dev extra has it)")
    _, report, out = sweep
    xmlschema.XMLSchema(XSD).validate(str(out / "parity.xml"))
    import xml.etree.ElementTree as ET

    root = ET.parse(out / "parity.xml").getroot()
    suites = root.findall("testsuite")
    assert len(suites) == 3
    for suite, b in zip(suites, report["bundles"]):
        cases = suite.findall("testcase")
        assert len(cases) == len(b["components"]) + 32
        failed = [c for c in cases if c.find("failure") is not None]
        assert len(failed) == b["summary"]["failed_cases"] + len(b["summary"]["failed_components"])
        assert all("image_psnr_db=" in c.find("failure").get("message") or "psnr_db=" in
                   c.find("failure").get("message") for c in failed)


def test_a_bundle_over_tolerance_fails_the_sweep_with_exit_1(bundles, tiny_sd, tmp_path):
    import onnx
    from onnx import numpy_helper

    from tests.bundle_edits import copy_bundle, rehash

    root = copy_bundle(bundles["fp32"], tmp_path / "drifted")
    model = onnx.load(str(root / "unet.onnx"))
    w = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2.0, w.name))
    onnx.save(model, str(root / "unet.onnx"))
    rehash(root, "unet.onnx")
    r = CliRunner().invoke(main, ["parity", str(bundles["fp32"]), str(root), "-r", str(tiny_sd),
                                  "--prompt", "a red circle", "--prompt", "a blue square", "--seeds", "1", *STEPS])
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert lines[1].split()[:3] == ["fp32", "fp32", "2"]
    assert lines[2].startswith("drifted") and lines[2].endswith("FAIL") and lines[1].endswith("ok")
    assert "drifted: component unet" in r.stdout and lines[-1] == "FAIL"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    return found


PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const r = document.createElement('pre'); r.id = 'probe';
  r.textContent = JSON.stringify({images: imgs.length, decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    plots: imgs.filter(i => i.className === 'plot' && i.naturalWidth >= 300).length,
    scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
    cases: document.querySelectorAll('.case').length});
  document.body.appendChild(r);
});
</script></body>"""


def test_html_report_renders_in_chromium_at_phone_width(sweep, tmp_path):
    """A copy of the report with a probe script: Chromium decodes every embedded image (3 per request and
    bundle, a drift plot per bundle) and the page is no wider than a 390 px phone screen."""
    chromium = _chromium()
    _, report, out = sweep
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text and "https://" not in text   # self-contained, static
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE), encoding="utf-8")
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=390,800",
                        "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                       timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout)
    assert found, r.stderr[-2000:]
    probe_result = json.loads(found.group(1).replace("&quot;", '"'))
    assert probe_result["cases"] == 3 * 32
    assert probe_result["images"] == 3 * 3 * 32 + 3 and probe_result["decoded"] == probe_result["images"]
    assert probe_result["plots"] == 3
    assert probe_result["scrollWidth"] <= probe_result["innerWidth"]
    shot = tmp_path / "phone.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=390,1400", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (390, 1400) and len(set(im.convert("L").getdata())) > 20   # drawn, not blank


def test_ray_sweep_gives_the_local_numbers(bundles, tiny_sd, ray_cluster):
    b = bundles
    args = ["parity", str(b["fp32"]), str(b["int8"]), "-r", str(tiny_sd), "--prompt", "a red circle",
            "--prompt", "a small blue square", "--seeds", "2", *STEPS, "--json"]
    local = CliRunner().invoke(main, args)
    ray = CliRunner().invoke(main, [*args, "--executor", "ray", "--workers", "2"])
    assert local.exit_code in (0, 1) and ray.exit_code == local.exit_code, ray.output
    assert "on 2 Ray workers" in ray.stderr
    assert json.loads(ray.stdout) == json.loads(local.stdout)
