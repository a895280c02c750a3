"""captum_mm: attention-based explanations of multimodal transformers, as Captum attributions."""

from captum_mm import _moved

_moved.install()

__version__ = "0.1.0"
