"""captum_mm: attention-based explanations of multimodal transformers, as Captum attributions."""

__version__ = "0.1.0"
