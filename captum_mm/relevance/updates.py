"""How a self-attention event's map updates readout rows (:class:`RowRule`), and one event's update of streamed rows
(:class:`~captum_mm.relevance.streaming.StreamedRows`), its map handed over block by block (docs/METHOD.md,
"Streaming row propagation")."""

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor

from captum_mm.relevance.rules import normalized_with_identity


@dataclass(frozen=True)
class RowRule:
    """One self-attention event's factor on readout rows ``v``: ``v <- v + v A_bar`` (``aggregate``, Eq. 6 for
    GenericAttention and Transformer attribution), ``v <- v A_bar`` (GenericAttention without aggregation, the
    last-layer baselines), or with ``normalize`` rollout's ``v <- v norm(A_bar + I)`` (each row of ``A_bar + I``
    divided by its sum ``s``: ``v' + v' A_bar`` for ``v' = v / s``).

    Attributes:
        aggregate (bool): Add the product to the rows (else it replaces them). Default: True
        normalize (bool): Rollout's row normalisation (with ``aggregate``). Default: False
    """

    aggregate: bool = True
    normalize: bool = False

    def __call__(self, rows: Tensor, fused: Tensor) -> Tensor:
        """``rows`` ``[E, k, N]`` times ``S_l``, ``fused`` ``[E, N, N]`` the event's map."""
        if self.normalize:
            return torch.bmm(rows, normalized_with_identity(fused))
        return self.combine(rows, torch.bmm(rows, fused))

    def combine(self, rows: Tensor, product: Tensor) -> Tensor:
        """The rows after the event, given the rows before it (``v'`` when normalising) and their product with the map.

        Args:
            rows (Tensor): ``v``, ``[E, k, N]``.
            product (Tensor): ``v A_bar``, ``[E, k, N]``.

        Returns:
            *Tensor*
        """
        return rows + product if self.aggregate else product


class RowUpdate:
    """One event's update of the streamed rows of ``modality`` for the elements ``members``: the map's chunks
    (:meth:`add`, padding entries included) applied to the rows of real tokens, the product kept on real tokens --
    the same as the padding-masked map's product.

    Args:
        values (dict[str, Tensor]): The streamed rows ``[E, k, N]`` by modality, updated by :meth:`close`.
        rule (RowRule): How the event's map updates them.
        real (Tensor): ``[E, N]`` the modality's real tokens.
        modality (str): The event's modality.
        members (Tensor): ``[E]`` the elements updated.
    """

    def __init__(self, values: Dict[str, Tensor], rule: RowRule, real: Tensor, modality: str, members: Tensor) -> None:
        self.values, self.rule, self.modality, self.members = values, rule, modality, members
        self.real = real[members][:, None, :]
        self.before = values[modality][members]
        self.source = self.before * self.real.to(self.before.dtype)
        self.product = torch.zeros_like(self.before)
        self.normalized = torch.zeros_like(self.before) if rule.normalize else self.before  # v / s

    def add(self, rows: slice, columns: slice, values: Tensor) -> None:
        """Apply ``values`` ``[e, rows, columns]``, the map's block for each member (entries not given are 0), its
        rows whole (every key they see) when the rule normalises.

        Args:
            rows (slice): The map's rows.
            columns (slice): Its columns.
            values (Tensor): The block, in the rows' dtype.
        """
        self._move_to(values.device)
        source = self.source[:, :, rows]
        if self.rule.normalize:
            source = self.normalized[:, :, rows] = _normalized(source, values, self.real[:, 0, columns])
        self.product[:, :, columns] += torch.bmm(source, values)

    def add_placed(self, elements: Tensor, rows: Tensor, columns: Tensor, values: Tensor) -> None:
        """Apply ``values`` ``[e, r, c]``, a block at the token positions ``rows`` and ``columns`` of the members
        ``elements`` (indices among them; a unit of a map laid out after the forward), as :meth:`add` does.

        Args:
            elements (Tensor): ``[e]`` the members the block is of.
            rows (Tensor): ``[r]`` its rows' positions.
            columns (Tensor): ``[c]`` its columns' (distinct).
            values (Tensor): The block, in the rows' dtype.
        """
        self._move_to(values.device)
        elements, rows, columns = elements.to(values.device), rows.to(values.device), columns.to(values.device)
        at = (elements[:, None, None], torch.arange(self.before.shape[1], device=elements.device)[None, :, None])
        source = self.source[elements][:, :, rows]
        if self.rule.normalize:
            source = _normalized(source, values, self.real[elements][:, 0][:, columns])
            self.normalized.index_put_((*at, rows[None, None, :]), source)
        self.product.index_put_((*at, columns[None, None, :]), torch.bmm(source, values), accumulate=True)

    def close(self) -> None:
        """Replace the members' rows by the rows after the event."""
        product = self.product * self.real.to(self.product.dtype)
        home = self.before.device
        self.values[self.modality][self.members] = self.rule.combine(self.normalized.to(home), product.to(home))

    def _move_to(self, device: torch.device) -> None:
        """The rows go where the map is (a model split over devices: the K rows, not the ``[N, N]`` map, move)."""
        if self.source.device != device:
            self.source, self.product, self.real = self.source.to(device), self.product.to(device), self.real.to(device)
            self.normalized = self.normalized.to(device)


def _normalized(source: Tensor, values: Tensor, real_columns: Tensor) -> Tensor:
    """Rollout's ``v' = v / s`` on a block's rows, ``s`` = 1 + each row's sum over real keys (``real_columns`` ``[e, c]``)."""
    return source / (1 + torch.bmm(values, real_columns[:, :, None].to(values.dtype))[:, None, :, 0])
