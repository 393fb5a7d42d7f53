"""Cached per-item modality features (text, image, audio, metadata) and their manifest checks."""
from jaxrec.features.store import Features, load_features

__all__ = ["Features", "load_features"]
