"""``ldm-export report --adherence N --executor ray``: the adherence images as Ray tasks give the local numbers;
``--html`` embeds each image beside the baseline's."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from ldm_export.cli import main


def test_report_on_ray_gives_the_local_rows_and_html(tiny_quantized_bundles, ray_cluster, tmp_path):
    b = tiny_quantized_bundles
    args = ["report", str(b["fp16"]), str(b["int8"]), "--baseline", str(b["fp16"]), "--adherence", "2", "--seeds",
            "2", "--steps", "4", "--runs", "1"]
    local = CliRunner().invoke(main, [*args, "--json", str(tmp_path / "local.json"), "--html",
                                      str(tmp_path / "r.html")])
    assert local.exit_code == 0, local.output
    ray = CliRunner().invoke(main, [*args, "--json", str(tmp_path / "ray.json"), "--executor", "ray", "--workers", "2"])
    assert ray.exit_code == 0, ray.output
    assert "on 2 Ray workers" in ray.stderr
    rows = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("local", "ray")}
    for a, r in zip(rows["local"], rows["ray"]):   # latency differs run to run; the images' numbers may not
        assert (a["adherence"], a["vs_baseline_psnr_db"]) == (r["adherence"], r["vs_baseline_psnr_db"])
        assert a["adherence"]["n"] == 4
    page = (tmp_path / "r.html").read_text()
    assert len(re.findall(r"<div class=case", page)) == 4          # the int8 bundle's 2 prompts × 2 seeds
    assert len(re.findall(r"src='data:image/png;base64,", page)) == 4 * 3
    assert "Machine and versions" in page and "<script" not in page
