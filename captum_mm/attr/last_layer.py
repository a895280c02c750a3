"""The base of the last-layer baselines (raw attention, attention Grad-CAM, partial LRP)."""

from typing import Dict, List

from torch import Tensor

from captum_mm.attr._base import AttentionAttribution
from captum_mm.relevance.propagation import Matrices, RowRelevance, last_event, last_layer_relevance, self_attention_only
from captum_mm.relevance.streaming import RowRule
from captum_mm.relevance.schedule import AttentionEvent, Schedule

__all__ = ["LastLayerAttribution"]


class LastLayerAttribution(AttentionAttribution):
    """Shared by the last-layer baselines: only the last event from the readout modality to each key is used,
    its fused map read at the readout row. A subclass implements :meth:`fuse` only."""

    def events(self, schedule: Schedule) -> List[AttentionEvent]:
        r"""
        The last event from each output's row modality to its key modality.

        Args:
            schedule (Schedule): The relevance schedule.

        Returns:
            list[AttentionEvent]: Those events, each once.
        """
        return list(dict.fromkeys(last_event(schedule, *pair) for pair in schedule.pairs))

    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        r"""
        Each ``(row, key)`` pair's relevance: the fused map of its last event (on self-attention-only
        schedules only its readout rows, ``e_p A_bar``: a ``RowRelevance`` over that event alone, which
        the engine may stream).

        Args:
            schedule (Schedule): The relevance schedule.
            maps (dict[int, Tensor]): The fused maps of :meth:`events`.

        Returns:
            dict[tuple[str, str], Tensor] or RowRelevance: ``[E, N_row, N_key]`` per pair, or the rows.
        """
        if self_attention_only(schedule):
            return RowRelevance(schedule, maps, RowRule(aggregate=False), self.events(schedule))
        return last_layer_relevance(schedule, maps)
