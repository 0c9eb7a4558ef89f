"""Core ML tests: skipped as a whole when coremltools cannot be imported (it is installed in CI).

coremltools is imported here first, in the ordinary way (with torch), so that the build-side conversions in
these tests see torch; the runtime's own import (which hides torch) then finds it already imported.
"""

from __future__ import annotations

import pytest

pytest.importorskip("coremltools", reason="coremltools is not installed (pip install coremltools==9.0)")


COMPONENTS = ("text_encoder", "unet", "vae_decoder")


@pytest.fixture(scope="session")
def tiny_sd_graphs(tiny_sd):
    from ldm_export.export import component_graphs
    from ldm_export.loading import load_model

    return {g.name: g for g in component_graphs(load_model(tiny_sd))}


@pytest.fixture(scope="session")
def tiny_sd_exports(tiny_sd_graphs):
    """One torch.export per component of the tiny SD model, serving both test sizes (batch 2 and 1)."""
    from ldm_export.targets.coreml.convert import export_component

    from tests.conftest import TINY_SIZES

    return {name: export_component(tiny_sd_graphs[name], list(TINY_SIZES)) for name in COMPONENTS}


@pytest.fixture(scope="session")
def tiny_sd_coreml(tiny_sd_graphs, tiny_sd_exports, tmp_path_factory):
    """The text encoder, UNet and decoder of the tiny SD model as fp32 and fp16 ML Programs (macOS 14):
    {(precision, component): (package path, manifest record)}. Read-only: copy a package to change it."""
    from ldm_export.targets.coreml.convert import convert_component

    from tests.conftest import TINY_SIZES

    root = tmp_path_factory.mktemp("coreml")
    out = {}
    for precision in ("fp32", "fp16"):
        for name in COMPONENTS:
            path = root / precision / f"{name}.mlpackage"
            record = convert_component(tiny_sd_graphs[name], list(TINY_SIZES), precision=precision, out=path,
                                       exported=tiny_sd_exports[name])
            out[precision, name] = (path, record)
    return out
