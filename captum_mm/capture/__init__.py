"""The modules: `record` (the recording context: hooks, the eager switch, one call recorded per spec), `eager` (each
family's eager attention, with an exact float64 softmax), `lean`, `chunks` and `requests` (lean capture inside the
attention function, what its backward is asked for and hands over), `replay` (a module's forward replayed) and `windows` (maps recorded in parts, per image or per window,
joined)."""

from captum_mm.capture.record import AttentionCall, AttentionRecord, capture_attention

__all__ = ["AttentionCall", "AttentionRecord", "capture_attention"]
