"""Compressors: identity, rand-K, top-K, QSGD and scaled sign, with exact bit counts."""
from .base import COMPRESSORS, Compressor, Identity, Payload, make_compressor, resolve_k

__all__ = ["COMPRESSORS", "Compressor", "Identity", "Payload", "make_compressor", "resolve_k"]
