"""One event's update of streamed readout rows (:class:`~captum_mm.relevance.streaming.StreamedRows`), its map
handed over block by block (docs/METHOD.md, "Streaming row propagation")."""

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from captum_mm.relevance.streaming import StreamedRows


class RowUpdate:
    """One event's update of the streamed rows of ``modality`` for the elements ``members``: the map's chunks
    (:meth:`add`, padding entries included) applied to the rows of real tokens, the product kept on real tokens --
    the same as the padding-masked map's product."""

    def __init__(self, streamed: "StreamedRows", modality: str, members: Tensor) -> None:
        self.streamed, self.modality, self.members = streamed, modality, members
        self.real = streamed.schedule.masks[modality][members][:, None, :]
        self.before = streamed.values[modality][members]
        self.source = self.before * self.real.to(self.before.dtype)
        self.product = torch.zeros_like(self.before)
        self.normalized = torch.zeros_like(self.before) if streamed.rule.normalize else self.before  # v / s

    def add(self, rows: slice, columns: slice, values: Tensor) -> None:
        """Apply ``values`` ``[e, rows, columns]``, the map's block for each member (entries not given are 0), its
        rows whole (every key they see) when the rule normalises.

        Args:
            rows (slice): The map's rows.
            columns (slice): Its columns.
            values (Tensor): The block, in the rows' dtype.
        """
        source = self.source[:, :, rows]
        if self.streamed.rule.normalize:
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
        at = (elements[:, None, None], torch.arange(self.before.shape[1], device=elements.device)[None, :, None])
        source = self.source[elements][:, :, rows]
        if self.streamed.rule.normalize:
            source = _normalized(source, values, self.real[elements][:, 0][:, columns])
            self.normalized.index_put_((*at, rows[None, None, :]), source)
        self.product.index_put_((*at, columns[None, None, :]), torch.bmm(source, values), accumulate=True)

    def close(self) -> None:
        """Replace the members' rows by the rows after the event."""
        product = self.product * self.real.to(self.product.dtype)
        self.streamed.values[self.modality][self.members] = self.streamed.rule.combine(self.normalized, product)


def _normalized(source: Tensor, values: Tensor, real_columns: Tensor) -> Tensor:
    """Rollout's ``v' = v / s`` on a block's rows, ``s`` = 1 + each row's sum over real keys (``real_columns`` ``[e, c]``)."""
    return source / (1 + torch.bmm(values, real_columns[:, :, None].to(values.dtype))[:, None, :, 0])
