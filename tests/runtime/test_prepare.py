"""``ldm-run prepare`` on an ONNX bundle: ONNX Runtime's optimized graphs saved per device, reused, keyed by
everything they depend on, and never left half-written."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from ldm_runtime.bundle import open_bundle
from ldm_runtime.cli import main as run_cli
from ldm_runtime.errors import UserError
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.request import Request
from ldm_runtime.runners import RunnerOptions, check_options, runner_class
from ldm_runtime.runners.onnxruntime import OnnxRuntimeRunner
from ldm_runtime.runners.ort_cache import CACHE_DIR, META, OrtKey, entry, write_entry

REQUEST = Request(prompt="a red circle", steps=3, seed=5, width=64, height=48)


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "b")


def _latents(root, cache_dir=None):
    b = open_bundle(root)
    pipe = Pipeline(b, Components(b, options=RunnerOptions(cache_dir=cache_dir)))
    return pipe.generate(REQUEST).latents


def _runners(root, cache_dir=None):
    b = open_bundle(root)
    return {name: OnnxRuntimeRunner(name, b.path(spec["file"]), spec, RunnerOptions(cache_dir=cache_dir))
            for name, spec in b.manifest["components"].items()}


def test_prepare_writes_one_entry_per_component_reuses_it_and_loads_give_the_same_latents(bundle, tmp_path):
    before = _latents(bundle)
    r = CliRunner().invoke(run_cli, ["prepare", str(bundle)])
    assert r.exit_code == 0, r.output
    runners = _runners(bundle)
    assert r.stdout.count("optimized for CPUExecutionProvider") == len(runners) >= 3, r.output
    for name, runner in runners.items():
        graph = runner._cached_graph()
        assert graph is not None and graph.parent.parent == bundle / CACHE_DIR, name
        assert f"{name}: optimized for CPUExecutionProvider in " in r.stdout
        meta = json.loads((graph.parent / f"{name}.{META}").read_text())
        assert meta["key"]["onnx_sha256"] == open_bundle(bundle).manifest["files"][runner.model_path.name]
    assert not list((bundle / CACHE_DIR).rglob(".*partial*"))
    again = CliRunner().invoke(run_cli, ["prepare", str(bundle)])
    assert again.exit_code == 0 and again.stdout.count("reusing the optimized graph") == len(runners), again.output
    # read back with graph optimization off, the saved graph computes what the optimizing load computes
    np.testing.assert_array_equal(_latents(bundle), before)
    r = CliRunner().invoke(run_cli, ["verify", str(bundle)])
    assert r.exit_code == 0 and r.stdout.strip().endswith("PASS"), r.output


def test_a_cache_folder_elsewhere_is_used_when_named(bundle, tmp_path):
    cache = tmp_path / "cache"
    r = CliRunner().invoke(run_cli, ["prepare", str(bundle), "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert not (bundle / CACHE_DIR).exists()
    assert all(run._cached_graph() for run in _runners(bundle, cache).values())
    assert not any(run._cached_graph() for run in _runners(bundle).values())  # not where it was not put


def test_every_field_of_the_key_changes_it():
    key = OrtKey("a" * 64, "b" * 64, "1.20.0", "CPUExecutionProvider", "x86_64:avx2+fma")
    changed = {"onnx_sha256": "c" * 64, "external_data_sha256": None, "onnxruntime_version": "1.21.0",
               "provider": "CUDAExecutionProvider", "cpu": "x86_64:avx2+fma+avx512f"}
    assert set(changed) == {f.name for f in dataclasses.fields(OrtKey)}
    digests = {dataclasses.replace(key, **{f: v}).digest for f, v in changed.items()}
    assert len(digests | {key.digest}) == len(changed) + 1


def test_an_entry_for_another_key_is_never_read(bundle):
    runner = _runners(bundle)["unet"]
    CliRunner().invoke(run_cli, ["prepare", str(bundle)])
    graph = runner._cached_graph()
    meta = graph.parent / f"unet.{META}"
    record = json.loads(meta.read_text())
    record["key"]["cpu"] = "aarch64:asimd"   # as if copied from another machine into this folder
    meta.write_text(json.dumps(record))
    assert runner._cached_graph() is None
    meta.write_text("{not json")
    assert runner._cached_graph() is None


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_an_interrupted_prepare_leaves_nothing_and_keeps_an_earlier_entry(bundle, tmp_path, interrupt):
    runner = _runners(bundle)["unet"]
    cache = tmp_path / "cache"
    key = runner.cache_key()

    def optimize_then_fail(target, data_name):
        runner._optimize_to(target, data_name)     # ONNX Runtime has written the whole graph...
        raise interrupt("stopped")                 # ...and the run stops before it is published

    with pytest.raises(interrupt):
        write_entry(cache, key, "unet", optimize_then_fail)
    assert entry(cache, key, "unet") is None
    assert [p.name for p in cache.rglob("*") if p.is_file()] == []
    good = write_entry(cache, key, "unet", runner._optimize_to)
    with pytest.raises(interrupt):                 # a --force run that is interrupted: the earlier entry stays
        write_entry(cache, key, "unet", optimize_then_fail)
    assert entry(cache, key, "unet") == good
    assert sorted(p.name for p in good.parent.iterdir()) == sorted(
        ["unet.onnx", f"unet.{META}"] + (["unet.onnx.data"] if (good.parent / "unet.onnx.data").exists() else []))


def test_generate_and_verify_read_a_cache_named_with_cache(bundle, tmp_path):
    cache = tmp_path / "cache"
    assert CliRunner().invoke(run_cli, ["prepare", str(bundle), "--cache", str(cache)]).exit_code == 0
    r = CliRunner().invoke(run_cli, ["verify", str(bundle), "--cache", str(cache)])
    assert r.exit_code == 0 and r.stdout.strip().endswith("PASS"), r.output
    with pytest.raises(UserError, match=r"^--cache applies to --backend onnxruntime or tensorrt only; this run uses "
                                         r"--backend coreml-reference$"):
        check_options(runner_class("coreml-reference"), RunnerOptions(cache_dir=cache))


def test_the_tensorrt_execution_provider_gets_the_bundles_profiles_and_caches(tiny_bundle, tmp_path):
    """ONNX Runtime's TensorRT EP is given each component's optimization profile (the box every declared size
    and both guidance batches lie in, in the EP's "name:AxBxC" format) and an engine and timing cache, so
    it builds once instead of whenever a shape changes. (The EP itself is not installed here: this checks
    what the runner hands it.)"""
    from ldm_runtime.tensorrt.profiles import component_profile

    b = open_bundle(tiny_bundle)
    spec = b.manifest["components"]["unet"]
    runner = OnnxRuntimeRunner("unet", b.path(spec["file"]), spec, RunnerOptions(cache_dir=tmp_path))
    assert runner._provider_entries() == runner.providers == ["CPUExecutionProvider"]   # others: names only
    runner.providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    (name, options), *rest = runner._provider_entries()
    assert name == "TensorrtExecutionProvider" and rest == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert options["trt_engine_cache_enable"] == options["trt_timing_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path / "ort-tensorrt")
    res, f = b.manifest["resolution"], b.manifest["latent"]["downsample_factor"]
    c, (tokens, width) = spec["inputs"]["sample"]["shape"][1], spec["inputs"]["encoder_hidden_states"]["shape"][1:]
    for kind, batch, (w, h) in (("min", 1, res["min"]), ("opt", 2, res["default"]), ("max", 2, res["max"])):
        shapes = dict(item.split(":") for item in options[f"trt_profile_{kind}_shapes"].split(","))
        assert shapes == {"sample": f"{batch}x{c}x{h // f}x{w // f}", "timestep": f"{batch}",
                          "encoder_hidden_states": f"{batch}x{tokens}x{width}"}, kind
    assert component_profile(b.manifest, "unet")["sample"]["max"] == [2, c, res["max"][1] // f, res["max"][0] // f]
