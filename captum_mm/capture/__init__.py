"""Attention capture on an unmodified HuggingFace model: the recording context (:mod:`.record`), each family's
eager attention with an exact float64 softmax (:mod:`.eager`), lean capture inside the attention function
(:mod:`.lean`) and forward replay (:mod:`.replay`)."""

from captum_mm.capture.record import AttentionCall, AttentionRecord, capture_attention

__all__ = ["AttentionCall", "AttentionRecord", "capture_attention"]
