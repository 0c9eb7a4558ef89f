"""The procedural shapes data and the analytic adherence checker (numpy only, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_export.demo import adherence, shapes


def test_generator_is_deterministic_per_seed():
    a_imgs, a_caps, a_meta = shapes.make_dataset(20, seed=3)
    b_imgs, b_caps, b_meta = shapes.make_dataset(20, seed=3)
    c_imgs, c_caps, _ = shapes.make_dataset(20, seed=4)
    assert np.array_equal(a_imgs, b_imgs) and a_caps == b_caps and a_meta == b_meta
    assert not np.array_equal(a_imgs, c_imgs)
    assert a_imgs.dtype == np.uint8 and a_imgs.shape == (20, 32, 32, 3)


def test_sample_returns_image_caption_metadata():
    img, cap, meta = shapes.sample(np.random.default_rng(0))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    parsed = shapes.parse_caption(cap)
    assert [o["colour"] for o in parsed["objects"]] == [o["colour"] for o in meta["objects"]]
    assert [o["shape"] for o in parsed["objects"]] == [o["shape"] for o in meta["objects"]]


def test_grammar_round_trip_and_enumeration():
    prompts = shapes.all_prompts()
    assert len(prompts) == len(set(prompts)) == 216 + 3888
    for p in prompts[::7]:
        assert shapes.format_caption(shapes.parse_caption(p)) == p
    _, caps, _ = shapes.make_dataset(200, seed=5)
    assert set(caps) <= set(prompts)
    for c in caps:
        assert shapes.format_caption(shapes.parse_caption(c)) == c
    with pytest.raises(ValueError):
        shapes.parse_caption("a purple hexagon")
    ev = shapes.eval_prompts(100)
    assert len(set(ev)) == 100 and ev == shapes.eval_prompts(100)


def test_checker_scores_ground_truth_high():
    imgs, caps, _ = shapes.make_dataset(400, seed=11)
    s = adherence.score(caps, list(imgs))
    assert s["colour"] >= 0.99 and s["shape"] >= 0.97 and s["position"] >= 0.97
    assert s["overall"] >= 0.95
    # float [0, 1] input is accepted too
    assert adherence.check(caps[0], imgs[0].astype(np.float32) / 255).overall == adherence.check(caps[0], imgs[0]).overall


def test_checker_ground_truth_for_eval_prompts():
    rng = np.random.default_rng(0)
    prompts = shapes.eval_prompts(100)
    gt = [shapes.render_prompt(p, rng) for p in prompts]
    assert adherence.score(prompts, gt)["overall"] >= 0.95


def test_checker_scores_noise_and_blank_low():
    rng = np.random.default_rng(1)
    _, caps, _ = shapes.make_dataset(100, seed=12)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in caps]
    blank = [np.full((32, 32, 3), int(v), np.uint8) for v in rng.integers(0, 256, len(caps))]
    assert adherence.score(caps, noise)["overall"] <= 0.05
    assert adherence.score(caps, blank)["overall"] == 0.0


def test_checker_detects_wrong_attributes():
    rng = np.random.default_rng(2)
    img = shapes.render_prompt("a red circle on the left", rng)
    assert adherence.check("a red circle on the left", img).overall
    assert not adherence.check("a blue circle on the left", img).colour
    assert not adherence.check("a red triangle on the left", img).shape
    assert not adherence.check("a red circle on the right", img).position
    pair = shapes.render_prompt("a green square above a yellow triangle", rng)
    assert adherence.check("a green square above a yellow triangle", pair).overall
    assert not adherence.check("a green square below a yellow triangle", pair).position
    assert not adherence.check("a green square", pair).count
