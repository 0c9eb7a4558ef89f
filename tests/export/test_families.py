"""Every family of the paper: build → ldm-run generate → parity against the torch reference.

Tiny random-weight models mirror the original configs (see tests/models/families.py);
fp32 final images must agree within 2 uint8 levels.
"""

from __future__ import annotations

import pytest

from tests.models import FAMILIES as TINY_FAMILIES
from tests.models import MODELS
from tests.models import families as rf
from ldm_export.build import BuildConfig, build
from ldm_export.parity import ParitySweep, format_parity, run_parity
from ldm_runtime.request import Request
from ldm_runtime.bundle import open_bundle
from ldm_runtime.pipeline import Components, Pipeline
from ldm_runtime.verify import format_report, verify_bundle

FAMILIES = {name: (MODELS[name].make, MODELS[name].family, MODELS[name].autoencoder, MODELS[name].sizes)
            for name in TINY_FAMILIES}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_bundle(request, tmp_path_factory):
    builder, family, ae, sizes = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = builder(root / "model")
    build(BuildConfig(model=model, out=root / "bundle", resolutions=sizes))
    return request.param, model, root / "bundle"


def test_manifest_describes_the_family(family_bundle):
    name, _, bundle = family_bundle
    _, family, ae, _ = FAMILIES[name]
    m = open_bundle(bundle).manifest
    assert (m["family"], m["autoencoder"]["kind"]) == (family, ae)


def test_verify_passes(family_bundle):
    _, _, bundle = family_bundle
    b = open_bundle(bundle)
    report = verify_bundle(Pipeline(b, Components(b)))
    assert report.ok, format_report(report)


def test_parity_with_torch_reference(family_bundle):
    """eta 0.5 over 10 steps (verify already replays an eta-0 trajectory of the same reference)."""
    name, model, bundle = family_bundle
    report = run_parity(ParitySweep(bundle=bundle, reference=model, prompts=("a red circle on the left",),
                                    seeds=(0,), class_labels=(3,), base=Request(steps=10, guidance_scale=7.5, eta=0.5)))
    assert report.ok, format_parity(report)
    assert all(c["image_max_abs"] <= 2 for c in report.cases)


def _bad_inputs(name: str) -> list[tuple[dict, str]]:
    """Per family, inputs a user might wrongly give and the one-line error each must produce."""
    import numpy as np

    img = np.zeros((32, 32, 3), np.uint8)
    cases = {
        "uncond-vq": [({"prompt": "a cat"}, "unconditional and takes no prompt"),
                      ({"class_label": 1}, "takes no class label")],
        "class-unet": [({"class_label": 11}, r"class label 11 is out of range; this model has classes 0 … 10"),
                       ({"class_label": -1}, "out of range"), ({}, "needs --class-label")],
        "superres": [({}, "needs a low-resolution input image"), ({"prompt": "x", "image": img}, "takes no prompt")],
        "inpainting": [({"prompt": "x", "image": img, "mask": np.zeros((16, 32), np.uint8)},
                        r"the mask is 32x16 but the image is 32x32; they must be the same size"),
                       ({"prompt": "x", "image": img}, "needs an image and a mask")],
        "ldmbert": [({"prompt": "x", "negative_prompt": "y"}, "has no negative prompt")],
    }
    cases["uncond-kl"] = cases["uncond-vq"]
    cases["class-context"] = cases["class-unet"]
    cases["sd-v"] = [({"prompt": "x", "width": 30}, "not a multiple of")]
    return cases[name]


def test_bad_inputs_get_one_line_errors(family_bundle):
    from ldm_runtime.errors import UserError

    name, _, bundle = family_bundle
    b = open_bundle(bundle)
    pipe = Pipeline(b, Components(b))
    for kwargs, match in _bad_inputs(name):
        kwargs = {"prompt": "", **kwargs}
        with pytest.raises(UserError, match=match) as e:
            pipe.generate(Request(steps=1, **kwargs))
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_full_size_ldm4_celebahq_unet_step_in_onnx_runtime(tmp_path):
    """The paper's LDM-4 CelebA-HQ architecture (274 M UNet parameters, random weights): export the
    UNet and run one step in ONNX Runtime against torch at 256x256."""
    from ldm_export import export
    from ldm_export.loading import load_model

    model = load_model(rf.make_celebahq_ldm_vq4_architecture(tmp_path / "model"))
    unet = next(g for g in export.component_graphs(model) if g.name == "unet")
    files = export.export_onnx(unet, tmp_path, (256, 256))
    rows = export.check_against_torch(unet, tmp_path / files[0], [(256, 256)])
    assert rows[0]["rel_l2"] < 1e-4


def test_ldm_run_generate_cli_without_torch(family_bundle, tmp_path):
    """`ldm-run generate` with the flags of each family (--class-label, --image, --mask) in a process
    where torch cannot be imported, reproducing the golden image at the golden settings."""
    import subprocess

    import numpy as np
    from PIL import Image

    from tests.conftest import ldm_run_blocked

    _, _, bundle = family_bundle
    m = open_bundle(bundle).manifest
    g = m["golden"]
    with np.load(bundle / g["file"]) as z:
        golden = {k: z[k] for k in z.files}
    args = ["generate", str(bundle), "--steps", str(g["steps"]), "--guidance", str(g["guidance_scale"]),
            "--seed", str(g["seed"]), "--out", str(tmp_path / "out.png")]
    if g["prompt"]:
        args += ["--prompt", g["prompt"]]
    if g.get("class_label") is not None:
        args += ["--class-label", str(g["class_label"])]
    if "request/image" in golden:
        Image.fromarray(golden["request/image"]).save(tmp_path / "in.png")
        args += ["--image", str(tmp_path / "in.png")]
    else:
        args += ["--width", str(g["width"]), "--height", str(g["height"])]
    if "request/mask" in golden:
        Image.fromarray(golden["request/mask"]).save(tmp_path / "mask.png")
        args += ["--mask", str(tmp_path / "mask.png")]
    r = subprocess.run(ldm_run_blocked(*args), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    assert np.abs(got - golden["trajectory/image"].astype(int)).max() <= 2
