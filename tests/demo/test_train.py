"""The demo training script end to end at toy scale: every stage runs, the result is an ordinary
diffusers pipeline folder, and the same seed gives the same weights."""

from __future__ import annotations

from pathlib import Path

from ldm_export.demo import train

TOY = ["--n-train", "48", "--n-val", "8", "--ae-steps", "2", "--ae-batch", "4", "--ae-full-steps", "2",
       "--ae-full-batch", "4", "--unet-steps", "2", "--unet-steps2", "2", "--unet-steps3", "2", "--unet-batch", "4",
       "--threads", "1"]


def _weights(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_training_runs_every_stage_and_is_reproducible(tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name / "model"
        train.main(["--out", str(out), *TOY])
        runs.append(_weights(out))
        import json

        log = json.loads((out.parent / "training_log.json").read_text())
        assert {r["phase"] for r in log["diffusion"]} == {"1", "2", "3"}
        assert log["autoencoder_summary"]["steps"] == 4 and not log["summary"]["stopped_early"]
        assert not (out.parent / "model.work").exists()
    assert set(runs[0]) == {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                            "vae/diffusion_pytorch_model.safetensors"}
    assert runs[0] == runs[1], "same seed and arguments must give the same weights"

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "a" / "model", safety_checker=None)
    assert pipe.vae.config.scaling_factor > 0 and pipe.tokenizer.model_max_length == train.MAX_LENGTH


def test_edge_weights_mark_shape_edges_only():
    import numpy as np
    import torch

    from ldm_export.demo import shapes

    img, _, meta = shapes.sample(np.random.default_rng(3))
    x = train.to_tensor(img[None])
    w = train.edge_weights(x, 5.0)
    assert w.shape == (1, 1, 32, 32) and set(torch.unique(w).tolist()) == {1.0, 6.0}
    o = meta["objects"][0]
    cy, cx = int(o["cy"]), int(o["cx"])
    assert w[0, 0, cy, cx] == 1.0  # the flat inside of a shape
    assert (w[0, 0, cy, cx:] == 6.0).any() and (w[0, 0, cy, :cx] == 6.0).any()  # its left and right edges
    assert (w == 6.0).float().mean() < 0.5
    flat = train.to_tensor(np.full((1, 32, 32, 3), 128, np.uint8))
    assert torch.equal(train.edge_weights(flat, 5.0), torch.ones(1, 1, 32, 32))


def test_resume_without_a_phase_3_is_refused(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        train.main(["--out", str(tmp_path / "m"), "--resume-from", str(tmp_path / "prev")])
    assert "--unet-steps3" in capsys.readouterr().err and not (tmp_path / "m").exists()
