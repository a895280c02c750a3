"""The interface a method implements: what it needs of each attention map, and how it turns them into relevance."""

from abc import ABC, abstractmethod
from typing import Dict, List

from torch import Tensor

from captum_mm.attr.engine import AttentionBundle, Needs
from captum_mm.relevance.propagation import Matrices
from captum_mm.relevance.schedule import AttentionEvent, Schedule

__all__ = ["AttentionMethod"]


class AttentionMethod(ABC):
    """The abstract part of :class:`~captum_mm.attr.AttentionAttribution`, the base of every method.

    A method declares :attr:`needs`, implements :meth:`fuse` and
    :meth:`relevance_matrices`, and may override :meth:`events`; the engine
    (:mod:`captum_mm.attr.engine`) runs the model, the backward passes :attr:`needs`
    asks for, and calls these for each group of explained elements (tokens, DETR
    queries): :meth:`events` once, :meth:`fuse` for each of its events, then
    :meth:`relevance_matrices` on the fused maps. A subclass missing :meth:`fuse` or
    :meth:`relevance_matrices` cannot be instantiated (``TypeError``).
    """

    #: What the method needs of each attention map it uses.
    needs: Needs = Needs(probabilities=True, gradients=True)

    def events(self, schedule: Schedule) -> List[AttentionEvent]:
        r"""
        The attention events whose fused maps the method uses; only these are fused
        (and, for a method needing gradients or LRP relevance, only these get them).

        Args:
            schedule (Schedule): The model's relevance schedule for the explained
                        elements: its events in forward order (``schedule.events``), the
                        token counts (``sizes``) and masks (``masks``) of each modality,
                        the output pairs read out (``pairs``).

        Returns:
            list[AttentionEvent]: Events of ``schedule.events``, each once. Default: every
            event of the schedule.
        """
        return schedule.events

    @abstractmethod
    def fuse(self, bundle: AttentionBundle) -> Tensor:
        r"""
        One attention event's per-head tensors to one map (the head reduction).

        Args:
            bundle (AttentionBundle): The event's tensors for the ``E`` explained elements
                        of one backward pass: ``probs`` (the probabilities ``A``),
                        ``grads`` (``dy/dA``) and ``relevance`` (LRP's ``R_A``), each
                        ``[E, H, Nq, Nk]`` and present only if :attr:`needs` asks for it
                        (else None); ``valid``, ``[E, Nq, Nk]`` booleans, the entries
                        between real (unpadded) tokens the element sees.

        Returns:
            Tensor: The fused map ``[E, Nq, Nk]``. When :attr:`needs` names a ``fusion``
            that lean capture computes, the engine may compute this map itself and not
            call :meth:`fuse`: the two must agree.
        """

    @abstractmethod
    def relevance_matrices(self, schedule: Schedule, maps: Dict[int, Tensor]) -> Matrices:
        r"""
        Fused maps to relevance matrices, whose readout rows are the explanation.

        Args:
            schedule (Schedule): As for :meth:`events`, for the elements of one group.
            maps (dict[int, Tensor]): The fused map ``[E, Nq, Nk]`` of every event of
                        :meth:`events`, by the event's ``call``.

        Returns:
            dict[tuple[str, str], Tensor] or RowRelevance: A relevance matrix
            ``[E, N_row, N_key]`` per ``(row, key)`` pair of ``schedule.pairs``, or a
            :class:`~captum_mm.relevance.propagation.RowRelevance` computing only the
            readout rows. The readout reads each output's row, zeroes the row token's
            own entry and the padding.
        """
