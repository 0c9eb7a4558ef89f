"""``coreml-reference``: Core ML ML Programs evaluated op by op in numpy (Linux, CI, any machine).

* :mod:`.program`: reads an ``.mlpackage`` (with coremltools' MIL loader, torch hidden) into plain data;
* :mod:`.evaluate`: runs it, fp16 kept fp16 at op boundaries (or fp32 arithmetic on request);
* :mod:`.ops`: the numpy kernels, one module per op family, in one table;
* :mod:`.runner`: :class:`CoreMLReferenceRunner`, the backend's :class:`~ldm_runtime.runners.base.Runner`.
"""

from .runner import CoreMLReferenceRunner

__all__ = ["CoreMLReferenceRunner"]
