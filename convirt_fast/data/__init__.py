"""Data sets: the manifest (the one interface between preparation and training), image
pre-resizing, the leakage check and SynthCXR, the built-in synthetic default.

Submodules are imported on use so that preparation workers stay light (no torch import).
"""
