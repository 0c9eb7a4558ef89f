"""The ``coreml`` target: ML Programs (``.mlpackage``) converted through ``torch.export``.

* :mod:`.workarounds`: the coremltools 9.0 / torch 2.13 conversion workarounds, applied around conversion;
* :mod:`.convert`: one component to one package, with enumerated shapes;
* :mod:`.compress`: k-means palettization, int8 weights, sensitivity-driven mixed bit widths;
* :mod:`.split`: a UNet over the iOS weight limit in two chunks.

coremltools and torch are imported inside the functions that need them.
"""
