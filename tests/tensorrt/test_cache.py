"""The engine cache: its key, atomic writes, lookup by device, the refusal, and reuse.

Engine metadata and device descriptions are plain data, so all of this runs without TensorRT; the
plan bytes are arbitrary (nothing here deserializes them)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import pytest

from ldm_runtime.errors import UserError
from ldm_runtime.tensorrt.cache import EngineCache, EngineKey, engine_meta
from ldm_runtime.tensorrt.device import DeviceDescription, EngineMismatch, engine_mismatch
from tests.tensorrt.conftest import ORIN_8GB, RTX_4090

PROFILE = [{"sample": {"min": [1, 4, 16, 16], "opt": [2, 4, 16, 16], "max": [2, 4, 24, 32]}}]
KEY = EngineKey(onnx_sha256="a" * 64, external_data_sha256=None, tensorrt_version="10.3.0.30",
                compute_capability="8.7", profiles=PROFILE, flags=("REFIT",))
CHANGED = {  # one different value per field of the key
    "onnx_sha256": "b" * 64,
    "external_data_sha256": "c" * 64,
    "tensorrt_version": "10.3.0.26",
    "compute_capability": "8.6",
    "hardware_compatibility_level": "SAME_COMPUTE_CAPABILITY",
    "profiles": [{"sample": {"min": [1, 4, 16, 16], "opt": [1, 4, 16, 16], "max": [2, 4, 24, 32]}}],
    "flags": ("REFIT_INDIVIDUAL",),
}


def test_every_field_of_the_key_changes_the_key():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(EngineKey)}
    digests = {name: dataclasses.replace(KEY, **{name: value}).digest for name, value in CHANGED.items()}
    assert KEY.digest not in digests.values()
    assert len(set(digests.values())) == len(CHANGED)


def test_key_is_canonical():
    assert dataclasses.replace(KEY, flags=("REFIT", "REFIT")).digest == KEY.digest
    assert dataclasses.replace(KEY, tensorrt_version="10.3.0.30").digest == KEY.digest
    # with a compatibility level the target is the level, not the build GPU's compute capability
    a = dataclasses.replace(KEY, hardware_compatibility_level="AMPERE_PLUS", compute_capability="8.6")
    assert a.digest == dataclasses.replace(a, compute_capability="8.9").digest


def _write(cache, key=KEY, component="unet", device=ORIN_8GB, plan=b"plan-bytes" * 100, **extra):
    return cache.write(key, component, plan, engine_meta(device, key, device_memory_bytes=123, **extra))


def test_write_then_lookup_round_trip(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    entry = _write(cache)
    assert entry.plan == tmp_path / "engines" / KEY.digest / "unet.plan"
    assert entry.plan.read_bytes() == b"plan-bytes" * 100
    meta = json.loads(entry.plan.with_suffix(".json").read_text())
    assert meta["plan_sha256"] == hashlib.sha256(b"plan-bytes" * 100).hexdigest()
    found = cache.lookup("unet", KEY.onnx_sha256, ORIN_8GB, "b/")
    assert (found.key, found.plan) == (KEY.digest, entry.plan)
    assert cache.get(KEY, "unet") == found   # what a second `prepare` reuses
    assert cache.get(dataclasses.replace(KEY, flags=()), "unet") is None
    assert cache.max_device_memory(ORIN_8GB) == 123 and cache.max_device_memory(RTX_4090) == 0


def test_an_interrupted_write_leaves_nothing_that_is_used(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path / "engines")
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):      # the plan lands, then the process "dies" before the metadata
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        _write(cache)
    monkeypatch.undo()
    folder = tmp_path / "engines" / KEY.digest
    assert sorted(p.name for p in folder.iterdir()) == ["unet.plan"]   # no temporary file, no metadata
    assert cache.entries() == []
    with pytest.raises(UserError, match="no TensorRT engine"):
        cache.lookup("unet", KEY.onnx_sha256, ORIN_8GB, "b/")
    _write(cache)                                                      # the next prepare completes it
    assert [e.key for e in cache.entries()] == [KEY.digest]


def test_truncated_plans_and_dead_temporaries(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    entry = _write(cache)
    stale = entry.plan.with_name(".unet.plan.tmp-999999999")   # a pid that cannot be alive
    stale.write_bytes(b"half")
    entry.plan.write_bytes(b"plan-")                            # truncated: size no longer matches
    assert cache.entries() == []
    _write(cache)
    assert not stale.exists() and len(cache.entries()) == 1


def test_an_engine_for_another_device_is_refused_in_one_line(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    rtx_key = dataclasses.replace(KEY, tensorrt_version=RTX_4090.tensorrt_version, compute_capability="8.9")
    _write(cache, rtx_key, device=RTX_4090)
    with pytest.raises(EngineMismatch) as e:
        cache.lookup("unet", KEY.onnx_sha256, ORIN_8GB, "/data/bundle")
    msg = str(e.value)
    assert "\n" not in msg
    assert "built for NVIDIA GeForce RTX 4090 (compute capability 8.9, TensorRT 10.3.0.26)" in msg
    assert "this device is Orin (compute capability 8.7" in msg and "TensorRT 10.3.0.30" in msg
    assert msg.endswith("ldm-run prepare /data/bundle")


@pytest.mark.parametrize("meta_change, device, why", [
    ({"tensorrt_version": "10.3.0.26"}, ORIN_8GB, "TensorRT 10.3.0.26 built it"),
    ({"compute_capability": "8.6"}, ORIN_8GB, "needs compute capability 8.6"),
    ({"hardware_compatibility_level": "AMPERE_PLUS"}, ORIN_8GB, "not supported on integrated GPUs"),
    ({"hardware_compatibility_level": "AMPERE_PLUS"},
     dataclasses.replace(RTX_4090, compute_capability="7.5", tensorrt_version="10.3.0.30"), "needs compute capability 8.0"),
])
def test_portability_rules(meta_change, device, why):
    meta = {**engine_meta(ORIN_8GB, KEY), **meta_change}
    assert why in engine_mismatch(meta, device)


def test_hardware_compatible_engines_run_on_other_discrete_gpus_of_the_level():
    ampere = dataclasses.replace(RTX_4090, gpu_name="NVIDIA A100", compute_capability="8.0")
    meta = {**engine_meta(ampere, KEY), "hardware_compatibility_level": "AMPERE_PLUS"}
    assert engine_mismatch(meta, RTX_4090) is None
    same_cc = {**engine_meta(RTX_4090, KEY), "hardware_compatibility_level": "SAME_COMPUTE_CAPABILITY",
               "gpu_name": "NVIDIA L40S"}
    assert engine_mismatch(same_cc, RTX_4090) is None


def test_lookup_prefers_the_engine_built_for_this_compute_capability(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    hw = dataclasses.replace(KEY, hardware_compatibility_level="AMPERE_PLUS", tensorrt_version="10.3.0.26")
    own = dataclasses.replace(KEY, tensorrt_version="10.3.0.26", compute_capability="8.9")
    _write(cache, hw, device=RTX_4090)
    _write(cache, own, device=RTX_4090)
    assert cache.lookup("unet", KEY.onnx_sha256, RTX_4090, "b").key == own.digest


def test_lookup_matches_the_graph_and_its_weights(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    _write(cache, dataclasses.replace(KEY, external_data_sha256="d" * 64))
    with pytest.raises(UserError, match="no TensorRT engine"):
        cache.lookup("unet", KEY.onnx_sha256, ORIN_8GB, "b", external_data_sha256="e" * 64)
    assert cache.lookup("unet", KEY.onnx_sha256, ORIN_8GB, "b", external_data_sha256="d" * 64)


def test_lookup_matches_the_profiles_and_the_refit_mode_asked_for(tmp_path):
    """Engines of one graph with another profile box (a shared --cache) are not this bundle's; of a refittable
    and a plain engine for this device, adapters get the refittable one, a plain run the plain one."""
    cache = EngineCache(tmp_path / "engines")
    plain = dataclasses.replace(KEY, flags=())
    other_box = dataclasses.replace(KEY, flags=(), profiles=CHANGED["profiles"])
    for key in (KEY, plain, other_box):
        _write(cache, key)
    lookup = cache.lookup
    assert lookup("unet", KEY.onnx_sha256, ORIN_8GB, "b", profiles=PROFILE, refittable=True).key == KEY.digest
    assert lookup("unet", KEY.onnx_sha256, ORIN_8GB, "b", profiles=PROFILE).key == plain.digest
    assert lookup("unet", KEY.onnx_sha256, ORIN_8GB, "b", profiles=CHANGED["profiles"]).key == other_box.digest
    with pytest.raises(UserError, match="no TensorRT engine"):
        lookup("unet", KEY.onnx_sha256, ORIN_8GB, "b", profiles=[{"sample": {"min": [1], "opt": [1], "max": [1]}}])


def test_device_description_is_plain_data():
    d = DeviceDescription.from_dict(json.loads(json.dumps(ORIN_8GB.to_dict())))
    assert d == ORIN_8GB and d.cc == (8, 7)
