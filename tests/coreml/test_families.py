"""Every family's tiny model (tests.models.FAMILIES): every component converts to an fp32 ML Program and the
reference evaluator matches torch within the fp32 tolerance table, at the model's test sizes, batch 2 and 1.
Slow: about one UNet conversion per family."""

from __future__ import annotations

import numpy as np
import pytest

from ldm_export.export import component_graphs, torch_outputs
from ldm_export.loading import load_model
from ldm_export.targets.coreml.convert import convert_component
from ldm_runtime.metrics import compare
from ldm_runtime.runners.coreml_reference import CoreMLReferenceRunner
from ldm_runtime.tolerances import component_tolerance
from tests.models import FAMILIES, MODELS, make


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_family_converts_and_evaluates(family, tmp_path):
    model = load_model(make(family, tmp_path / family))
    sizes = list(MODELS[family].sizes)
    for graph in component_graphs(model):
        path = tmp_path / f"{graph.name}.mlpackage"
        record = convert_component(graph, sizes, precision="fp32", out=path)
        tol = component_tolerance("fp32", graph.name)
        with CoreMLReferenceRunner(graph.name, path, record) as runner:
            for b in (2, 1):
                feeds = graph.make_inputs(b, *sizes[-1], np.random.default_rng(b))
                got = runner.run(feeds)
                for key, ref in torch_outputs(graph, feeds).items():
                    m = compare(got[key], ref)
                    assert m["rel_l2"] <= tol.rel_l2, (family, graph.name, b, key, m)
