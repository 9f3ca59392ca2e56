"""Compressors: identity, rand-K, top-K, QSGD and scaled sign, with exact bit counts."""
from . import sparse  # noqa: F401, I001  (registers randk, topk; first, so `distbo list` follows section 5)
from . import quantize  # noqa: F401  (registers qsgd, sign)
from .base import COMPRESSORS, Compressor, Identity, Payload, make_compressor, resolve_k
from .multistep import MultiStep, Scaled, contractive, multi_step
from .quantize import QSGD, Sign
from .sparse import RandK, TopK

__all__ = ["COMPRESSORS", "Compressor", "Identity", "MultiStep", "Payload", "QSGD", "RandK", "Scaled",
           "Sign", "TopK", "contractive", "make_compressor", "multi_step", "resolve_k"]
