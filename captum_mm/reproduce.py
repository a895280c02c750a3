"""Deprecated: the main job moved to :mod:`captum_mm.study` (``from captum_mm.study import Options, reproduce``)."""

import warnings

from captum_mm.study import CAPTIONS, Options, reproduce

warnings.warn(
    "captum_mm.reproduce is deprecated; import Options, reproduce and CAPTIONS from captum_mm.study.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["CAPTIONS", "Options", "reproduce"]
