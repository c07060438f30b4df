"""SynthCXR: procedurally generated chest radiographs with reports, the built-in default data set.

This package renders studies (images and reports); `convirt_fast.prepare.synthetic` writes them
into a prepared folder (`prepare synthetic`, or `ensure_synthcxr` on a run's first use).
"""

from __future__ import annotations

from convirt_fast.data.synthcxr.dataset import GENERATOR_VERSION, SynthConfig
from convirt_fast.data.synthcxr.findings import CATEGORIES

__all__ = ["CATEGORIES", "GENERATOR_VERSION", "SynthConfig"]
