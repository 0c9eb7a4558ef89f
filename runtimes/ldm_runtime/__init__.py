"""ldm_runtime: the torch-free deploy side of ldm-export.

Imports numpy, a tokenizer library, Pillow and exactly one backend; never torch,
diffusers or transformers (tests/structure/test_layout.py enforces it statically, and
tests/runtime/test_cli.py by importing every module with those blocked).
"""

__version__ = "0.1.0"
