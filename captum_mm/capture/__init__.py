"""The modules: `record` (the recording context: hooks, the eager switch, one call recorded per spec), `eager` (each
family's eager attention, with an exact float64 softmax), `lean` and `chunks` (lean capture inside the attention
function) and `replay` (a module's forward replayed)."""

from captum_mm.capture.record import AttentionCall, AttentionRecord, capture_attention

__all__ = ["AttentionCall", "AttentionRecord", "capture_attention"]
