"""Calibration sets: reproducible records of real DDIM trajectories, and a reader that refuses bad sets."""

from __future__ import annotations

import json
import shutil
import subprocess

import click
import numpy as np
import pytest
from click.testing import CliRunner
from ldm_runtime.cli import user_errors
from ldm_runtime.errors import UserError

from ldm_export.calibration import (
    CalibrationSet,
    collect,
    load_prompts,
    shapes_prompts,
    stratified_steps,
)
from ldm_export.calibration.prompt_sets import PROMPTS_DIR, shapes_file_text
from ldm_export.cli import main
from ldm_export.sweep.executor import one_torch_thread
from tests.conftest import blocked_python

ARGS = {"steps": 4, "samples": 3, "per_trajectory": 2}  # DDIM timesteps 751, 501, 251, 1; bins {0, 1} and {2, 3}
UNET_INPUTS = ["sample", "timestep", "encoder_hidden_states"]


@pytest.fixture(scope="module")
def calib(tiny_sd, tmp_path_factory):
    """The same set collected twice: through the CLI (default prompts) and through :func:`collect`."""
    root = tmp_path_factory.mktemp("calib")
    r = CliRunner().invoke(main, ["calibrate", str(tiny_sd), "--out", str(root / "cli"), "--steps", "4",
                                  "--samples", "3", "--per-trajectory", "2"])
    assert r.exit_code == 0, r.output
    manifest = collect(tiny_sd, root / "api", **ARGS)
    return root / "cli", root / "api", manifest, r.stdout


@pytest.fixture(scope="module")
def model(tiny_sd):
    from ldm_export.loading import load_model

    return load_model(tiny_sd)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- collecting

def test_same_command_twice_gives_identical_bytes(calib):
    cli, api, manifest, _ = calib
    a, b = _files(cli), _files(api)
    assert sorted(a) == ["calibration.json", "text_encoder-00000.safetensors", "unet-00000.safetensors",
                         "vae_decoder-00000.safetensors", "vae_encoder-00000.safetensors"]
    assert a == b
    assert json.loads(a["calibration.json"]) == manifest


def test_cli_prints_a_one_line_summary(calib):
    cli, _, _, stdout = calib
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    assert "unet 6" in lines[0] and "text_encoder 3" in lines[0] and str(cli) in lines[0]
    assert "timesteps 1–751" in lines[0]


def test_manifest_describes_the_collection(calib, model):
    _, api, manifest, _ = calib
    prompts = load_prompts("general")
    assert manifest["model"] == {"name": "tiny_sd", "family": "text-to-image", "sha256": model.source.sha256}
    assert manifest["prompts"] == {"set": "general", "sha256": prompts.sha256, "count": len(prompts.prompts)}
    assert (manifest["seed"], manifest["steps"], manifest["samples"], manifest["per_trajectory"]) == (0, 4, 3, 2)
    assert manifest["eta"] == 0.0 and manifest["guidance_scale"] == 7.5 and manifest["resolution"] == [16, 16]
    assert manifest["components"]["unet"]["count"] == 6
    assert manifest["components"]["unet"]["inputs"]["sample"] == {"dtype": "float32", "shape": [2, 4, 8, 8]}
    assert set(manifest["files"]) == {p.name for p in api.iterdir()} - {"calibration.json"}
    assert sum(manifest["timesteps"]["histogram"]["counts"]) == 6
    assert all(t["prompt"] in prompts.prompts for t in manifest["trajectories"])
    assert len({t["prompt"] for t in manifest["trajectories"]}) == 3  # drawn without replacement


def test_feeds_hold_both_guidance_halves_with_onnx_names(calib, model):
    import torch

    from ldm_export.reference import text_ids

    _, api, manifest, _ = calib
    cs = CalibrationSet.open(api, model.source.sha256)
    assert cs.components == ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    unet, text = cs.feeds("unet"), cs.feeds("text_encoder")
    assert len(unet) == 6 and len(text) == 3 and len(cs.feeds("vae_decoder")) == 3
    for f in unet:
        assert list(f) == UNET_INPUTS
        assert [f[k].dtype for k in UNET_INPUTS] == [np.float32] * 3
        assert f["sample"].shape == (2, 4, 8, 8) and f["timestep"].shape == (2,)
        assert f["encoder_hidden_states"].shape == (2, 16, 32)
        np.testing.assert_array_equal(f["sample"][0], f["sample"][1])  # CFG: one latent, two conditions
        assert f["timestep"][0] == f["timestep"][1]
        assert not np.allclose(f["encoder_hidden_states"][0], f["encoder_hidden_states"][1])
    for k, traj in enumerate(manifest["trajectories"]):
        ids = text[k]["input_ids"]
        assert ids.dtype == np.int64
        np.testing.assert_array_equal(ids, text_ids(model, ["", traj["prompt"]]))  # uncond half first
        with torch.no_grad():
            emb = model.modules.text_encoder(torch.from_numpy(ids))[0].numpy()
        for f in unet[2 * k: 2 * k + 2]:  # the records of trajectory k were conditioned on its prompt
            np.testing.assert_allclose(f["encoder_hidden_states"], emb, atol=1e-6)


def test_unet_records_lie_on_the_reference_trajectory(calib, model):
    from ldm_export.reference import reference_generate
    from ldm_runtime.request import Request

    _, api, manifest, _ = calib
    unet, dec = CalibrationSet.open(api).feeds("unet"), CalibrationSet.open(api).feeds("vae_decoder")
    traj = manifest["trajectories"][1]
    with one_torch_thread():   # as calibration runs every trajectory (ldm_export.sweep)
        run = reference_generate(model, Request(prompt=traj["prompt"], seed=traj["seed"], steps=4, width=16,
                                                height=16, guidance_scale=7.5))
    assert len(run.unet_calls) == 2 and run.inputs["unet"] is run.unet_calls[1]  # golden vectors: unchanged
    assert traj["steps"][1] > 0
    for f, i in zip(unet[2:4], traj["steps"]):
        if i > 0:  # the UNet's input at step i is the latent the scheduler returned at step i - 1
            np.testing.assert_array_equal(f["sample"][1], run.latents[i - 1][0])
        if i < 2:
            for k in UNET_INPUTS:
                np.testing.assert_array_equal(f[k], run.unet_calls[i][k])
    np.testing.assert_array_equal(dec[1]["latent"], run.inputs["vae_decoder"]["latent"])


def test_recorded_timesteps_cover_every_bin_of_every_trajectory(calib, model):
    from diffusers import DDIMScheduler

    _, api, manifest, _ = calib
    sched = DDIMScheduler.from_config(dict(model.scheduler_config))
    sched.set_timesteps(4)
    ts = sched.timesteps.tolist()
    assert ts == [751, 501, 251, 1]
    got = [int(f["timestep"][0]) for f in CalibrationSet.open(api).feeds("unet")]
    assert got == manifest["timesteps"]["recorded"]
    for k, traj in enumerate(manifest["trajectories"]):
        early, late = got[2 * k: 2 * k + 2]
        assert early in ts[:2] and late in ts[2:], traj
        assert traj["timesteps"] == [early, late] and [ts[i] for i in traj["steps"]] == [early, late]


@pytest.mark.parametrize("steps,per", [(20, 4), (5, 3), (7, 7), (3, 1)])
def test_stratified_steps_draw_one_step_from_each_equal_bin(steps, per):
    edges = [j * steps // per for j in range(per + 1)]
    seen = set()
    for seed in range(40):
        picks = stratified_steps(steps, per, np.random.default_rng(seed))
        assert len(picks) == per
        assert all(edges[j] <= p < edges[j + 1] for j, p in enumerate(picks))
        seen.update(picks)
    assert seen == set(range(steps))  # every step can be drawn
    assert stratified_steps(steps, per, np.random.default_rng(1)) == stratified_steps(
        steps, per, np.random.default_rng(1))


def test_class_conditional_records_class_labels_not_text(tmp_path):
    from ldm_export.loading import load_model
    from tests.models.families import make_tiny_class_conditional

    folder = make_tiny_class_conditional(tmp_path / "cin")
    m = collect(folder, tmp_path / "calib", steps=3, samples=2, per_trajectory=2, guidance_scale=3.0)
    cs = CalibrationSet.open(tmp_path / "calib", m["model"]["sha256"])
    assert cs.components == ["unet", "vae_decoder", "vae_encoder"] and m["prompts"] is None
    null = load_model(folder).classes.null_class  # the unconditional half's label
    for k, f in enumerate(cs.feeds("unet")):
        assert list(f) == ["sample", "timestep", "class_labels"] and f["class_labels"].dtype == np.int64
        assert f["class_labels"].tolist() == [null, m["trajectories"][k // 2]["class_label"]]


# ----------------------------------------------------------------------------- refusing bad sets

def test_summary_identifies_the_set_for_a_bundle_manifest(calib, model):
    from ldm_runtime.bundle import sha256_file

    s = CalibrationSet.open(calib[1]).summary()
    assert s["model_sha256"] == model.source.sha256 and s["prompts"]["set"] == "general"
    assert s["records"] == {"text_encoder": 3, "unet": 6, "vae_decoder": 3, "vae_encoder": 3}
    assert s["manifest_sha256"] == sha256_file(calib[1] / "calibration.json")
    assert (s["timesteps"]["min"], s["timesteps"]["max"]) == (1, 751)
    json.dumps(s)  # goes into a bundle manifest as is


def test_a_set_of_another_model_is_refused(calib, model):
    _, api, _, _ = calib
    with pytest.raises(UserError, match=r"was collected from model 'tiny_sd' \(sha256 [0-9a-f]{12}…\) but this "
                                        r"model is 000000000000…; collect a new one with `ldm-export calibrate`"):
        CalibrationSet.open(api, model_sha256="0" * 64)
    assert CalibrationSet.open(api, model_sha256=model.source.sha256).count("unet") == 6


def _truncate(root):
    p = root / "unet-00000.safetensors"
    p.write_bytes(p.read_bytes()[:-100])


def _flip_byte(root):
    p = root / "unet-00000.safetensors"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))


def _garbage_with_matching_hash(root):  # passes the hash check, fails to parse
    from ldm_runtime.bundle import sha256_file

    p = root / "unet-00000.safetensors"
    p.write_bytes(b"\xff" * 64)
    m = json.loads((root / "calibration.json").read_text())
    m["files"][p.name] = sha256_file(p)
    (root / "calibration.json").write_text(json.dumps(m))


def _edit_manifest(**changes):
    def edit(root):
        m = json.loads((root / "calibration.json").read_text())
        m.update(changes)
        (root / "calibration.json").write_text(json.dumps(m))
    return edit


TAMPER = {
    "missing folder": (lambda root: shutil.rmtree(root), "does not exist; create it with `ldm-export calibrate`"),
    "deleted shard": (lambda root: (root / "unet-00000.safetensors").unlink(), "unet-00000.safetensors is missing"),
    "truncated shard": (_truncate, "unet-00000.safetensors was modified or truncated"),
    "modified shard": (_flip_byte, "unet-00000.safetensors was modified or truncated"),
    "unparsable shard": (_garbage_with_matching_hash, "unet-00000.safetensors cannot be read"),
    "corrupt manifest": (lambda root: (root / "calibration.json").write_text("{\"format\": "), "is corrupt"),
    "missing manifest": (lambda root: (root / "calibration.json").unlink(), "has no calibration.json"),
    "wrong format version": (_edit_manifest(format_version=99), "has format version 99; this ldm-export reads"),
    "not a calibration set": (_edit_manifest(format="ldm-bundle"), "is not a calibration manifest"),
    "manifest lacks a field": (_edit_manifest(components={"unet": {"count": 6}}), "a component entry lacks"),
}


@pytest.fixture(params=sorted(TAMPER))
def tampered(request, calib, tmp_path):
    tamper, message = TAMPER[request.param]
    root = tmp_path / "set"
    shutil.copytree(calib[1], root)
    tamper(root)
    return root, message


def test_a_damaged_set_is_refused_with_a_message(tampered):
    root, message = tampered
    with pytest.raises(UserError, match=r"ldm-export calibrate") as e:
        CalibrationSet.open(root).feeds("unet")
    assert message in str(e.value)


def test_a_damaged_set_is_one_line_and_exit_2_on_the_command_line(tampered):
    @click.command()
    @click.argument("path")
    @user_errors
    def check(path):  # what a command reading a set (build --calibration) prints
        CalibrationSet.open(path).feeds("unet")

    root, message = tampered
    r = CliRunner().invoke(check, [str(root)])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.output


def test_feeds_of_a_component_without_records_is_refused(calib):
    with pytest.raises(UserError, match="has no records of 'class_embedder'; it has: text_encoder, unet"):
        CalibrationSet.open(calib[1]).feeds("class_embedder")


def test_the_reader_needs_no_torch(calib):
    code = ("from ldm_export.calibration import CalibrationSet\n"
            f"s = CalibrationSet.open({str(calib[1])!r})\n"
            "print(len(s.feeds('unet')), s.feeds('unet')[0]['sample'].shape)\n")
    r = subprocess.run(blocked_python(code), capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "6 (2, 4, 8, 8)"


# ----------------------------------------------------------------------------- command-line refusals

def _calibrate(*args):
    return CliRunner().invoke(main, ["calibrate", *args])


@pytest.mark.parametrize("case", ["missing prompts", "empty prompts", "out exists", "too many per trajectory"])
def test_calibrate_refuses_bad_arguments_in_one_line(case, tiny_sd, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    (tmp_path / "exists").mkdir()
    args, message = {
        "missing prompts": (["--prompts", str(tmp_path / "nope.txt")], "nope.txt does not exist"),
        "empty prompts": (["--prompts", str(empty)], "empty.txt holds no prompts"),
        "out exists": (["--out", str(tmp_path / "exists")], "already exists; choose another --out or pass --overwrite"),
        "too many per trajectory": (["--steps", "3", "--per-trajectory", "4"], "per-trajectory (4) exceeds"),
    }[case]
    out = [] if "--out" in args else ["--out", str(tmp_path / "calib")]
    r = _calibrate(str(tiny_sd), *args, *out)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "calib").exists()


# ----------------------------------------------------------------------------- prompt sets

@pytest.mark.parametrize("name", ["general", "shapes"])
def test_shipped_prompt_sets_are_usable(name):
    ps = load_prompts(name)
    assert ps.name == name and len(ps.prompts) >= 250
    assert len(set(ps.prompts)) == len(ps.prompts)
    assert max(len(p.split()) for p in ps.prompts) < 70  # fits a 77-token CLIP tokenizer


def test_shapes_prompts_file_matches_its_generator():
    from ldm_export.demo import shapes

    assert (PROMPTS_DIR / "shapes.txt").read_text(encoding="utf-8") == shapes_file_text(), (
        "regenerate it: python -m ldm_export.calibration.prompt_sets")
    prompts = shapes_prompts()
    assert [shapes.format_caption(shapes.parse_caption(p)) for p in prompts] == prompts  # all in the grammar
    kinds = [len(shapes.parse_caption(p)["objects"]) for p in prompts]
    assert kinds.count(1) == 216 and kinds.count(2) == 100


def test_auto_prompts_and_guidance_are_the_demo_models_for_the_demo_model_only(tiny_sd):
    from ldm_export.calibration import default_guidance, resolve_spec
    from ldm_export.cli import DEMO_MODEL
    from ldm_export.demo import GUIDANCE

    assert resolve_spec("auto", DEMO_MODEL) == "shapes"
    assert resolve_spec("auto", tiny_sd) == "general"
    assert resolve_spec("mine.txt", DEMO_MODEL) == "mine.txt"
    assert default_guidance(DEMO_MODEL) == GUIDANCE != 7.5
    assert default_guidance(tiny_sd) == 7.5


def test_a_prompt_file_ignores_comments_and_blank_lines(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("# my prompts\n\n  a red circle  \n# another comment\na blue square\n", encoding="utf-8")
    ps = load_prompts(str(f))
    assert ps.name == "mine.txt" and ps.prompts == ("a red circle", "a blue square")
    g = tmp_path / "plain.txt"
    g.write_text("a red circle\na blue square\n")
    assert load_prompts(str(g)).sha256 == ps.sha256  # the hash is of the prompts, not of the comments


@pytest.mark.parametrize("content,message", [(None, "does not exist"), ("\n# nothing\n   \n", "holds no prompts"),
                                             (b"\xff\xfe bad", "is not UTF-8 text")])
def test_an_unusable_prompt_file_is_refused(tmp_path, content, message):
    f = tmp_path / "p.txt"
    if isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    with pytest.raises(UserError, match=message):
        load_prompts(str(f))


def test_calibrate_with_another_sampler_records_that_schedulers_unet_inputs(tiny_sd, model, tmp_path):
    """--sampler dpmpp-2m: the recorded UNet inputs are the ones diffusers' DPMSolverMultistepScheduler feeds the
    UNet, not DDIM's. (Not Euler: without Karras sigmas, Euler on DDIM's timesteps is DDIM, step for step.)"""
    from diffusers import DPMSolverMultistepScheduler

    from ldm_export.reference import reference_generate
    from ldm_runtime.request import Request

    r = CliRunner().invoke(main, ["calibrate", str(tiny_sd), "--out", str(tmp_path / "c"), "--steps", "4",
                                  "--samples", "2", "--per-trajectory", "2", "--sampler", "dpmpp-2m"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "c" / "calibration.json").read_text())
    assert manifest["sampler"] == "dpmpp-2m"
    sched = DPMSolverMultistepScheduler.from_config(dict(model.scheduler_config))
    sched.set_timesteps(4)
    feeds = CalibrationSet.open(tmp_path / "c").feeds("unet")
    for k, traj in enumerate(manifest["trajectories"]):
        with one_torch_thread():   # as calibration runs every trajectory (ldm_export.sweep)
            run = reference_generate(model, Request(prompt=traj["prompt"], seed=traj["seed"], steps=4, width=16,
                                                    height=16, guidance_scale=7.5, sampler="dpmpp-2m"),
                                     record_all=True)
        for f, i in zip(feeds[2 * k: 2 * k + 2], traj["steps"]):
            assert float(f["timestep"][0]) == pytest.approx(float(sched.timesteps[i]))
            for name in UNET_INPUTS:
                np.testing.assert_array_equal(f[name], run.unet_calls[i][name])
    # the first step of DPM-Solver++ 2M is first order (DDIM's); from the second on the latents part
    traj = manifest["trajectories"][0]
    with one_torch_thread():
        ddim = reference_generate(model, Request(prompt=traj["prompt"], seed=traj["seed"], steps=4, width=16,
                                                 height=16, guidance_scale=7.5, sampler="ddim"), record_all=True)
    i = traj["steps"][1]
    assert i >= 2 and np.abs(feeds[1]["sample"] - ddim.unet_calls[i]["sample"]).max() > 0.1
