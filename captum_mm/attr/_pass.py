"""What a method needs of every attention map (:class:`Needs`) and what one captured forward pass left behind
(:class:`ForwardPass`): made by the engine's forward, read by its backward passes (:mod:`captum_mm.attr._backward`)."""

from dataclasses import dataclass
from typing import Any, Optional

from torch import Tensor

from captum_mm.capture.lean import Fusion
from captum_mm.capture.record import AttentionRecord
from captum_mm.lrp import LRPState
from captum_mm.models.adapter import ArchitectureAdapter
from captum_mm.models.targets import TargetSelection
from captum_mm.relevance.schedule import Schedule
from captum_mm.relevance.streaming import RowRule


@dataclass(frozen=True)
class Needs:
    """What a method needs of every attention map it uses."""

    #: The attention probabilities ``A``.
    probabilities: bool = True
    #: Their gradients ``dy/dA`` (an ordinary backward pass).
    gradients: bool = False
    #: The LRP relevance ``R_A`` at the maps (an LRP backward pass).
    relevance: bool = False
    #: How the method reduces heads, when it is one lean capture computes (:mod:`captum_mm.capture.lean`):
    #: then no per-head map is kept. None: the method receives the per-head tensors.
    fusion: Optional[Fusion] = None
    #: How the method's readout rows take each fused map of a self-attention-only modality (its
    #: :meth:`~captum_mm.attr.method.AttentionMethod.relevance_matrices` then returns a ``RowRelevance`` with this
    #: step): the engine may apply the maps while the backward computes them and keep none (streaming). None: the
    #: maps are kept.
    rows: Optional[RowRule] = None

    @property
    def backward(self) -> bool:
        return self.gradients or self.relevance


@dataclass
class ForwardPass:
    """What one captured forward pass left behind; the model's hooks are live while it is in use."""

    adapter: ArchitectureAdapter
    record: AttentionRecord
    output: Any
    logits: Tensor
    selection: TargetSelection
    schedule: Schedule
    lrp: Optional[LRPState]
    method: str
