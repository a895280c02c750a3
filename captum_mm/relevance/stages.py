"""Readout rows continued through earlier stages (a VLM's vision tower; docs/METHOD.md, "Stages joined by a
projection"): the read values of a later stage (:func:`read_columns`), the earlier stage's start rows they give
(:func:`stage_start`), and the stages whose rows the engine streams (:class:`StageEntries`; "Streaming row
propagation")."""

from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_mm.relevance.schedule import Readout, Schedule, Stage

Members = Union[slice, Tensor]
#: A readout's stage: its name and the stage's depth in its ``through`` chain.
Entry = Tuple[str, int]


def read_columns(schedule: Schedule, readout: Readout, rows: Tensor, members: Members = slice(None)) -> Tensor:
    """A readout's columns of its relevance rows ``rows`` (``[e, N_key]``, of the elements ``members``): padding and
    the row token's own entry zeroed, the readout's columns kept.

    Args:
        schedule (Schedule): The schedule.
        readout (Readout): The readout.
        rows (Tensor): ``R^{row, key}`` at the readout rows of the elements ``members``.
        members (slice or Tensor, optional): Which elements. Default: all

    Returns:
        *Tensor*: ``[e, n_columns]``.
    """
    rows = rows * schedule.masks[readout.key][members]
    if readout.key == readout.row and readout.row_weights is None:
        rows = rows.scatter(1, readout.rows[members][:, None], 0.0)
    if readout.column_mask is not None:
        rows = rows * readout.column_mask[members]
    if readout.column_index is None:
        return rows[:, readout.columns]
    index = readout.column_index[members]  # -1: no column
    return rows.gather(1, index.clamp(min=0)) * (index >= 0)


def stage_start(values: Tensor, stage: Stage, size: int) -> Tensor:
    """The rows ``values . P`` over the stage's tokens (``size``) at its ``rows``, where a later stage's read values
    ``values`` ``[e, n]`` continue.

    Args:
        values (Tensor): The later stage's read values.
        stage (Stage): The earlier stage.
        size (int): Its modality's tokens.

    Returns:
        *Tensor*: ``[e, size]``.
    """
    if stage.token_map is not None:
        values = values @ stage.token_map.to(values.dtype)
    start = values.new_zeros(values.shape[0], size)
    start[:, stage.rows] = values
    return start


class StageEntries:
    """The readouts' stages of some self-attention modalities (each stage of a modality a row of its streamed rows),
    and, as the backward passes fill them, the values each stage's rows started from.

    Args:
        schedule (Schedule): The schedule.
        modalities (list of str): The stages' modalities.
    """

    def __init__(self, schedule: Schedule, modalities: List[str]) -> None:
        self.schedule = schedule
        self.rows: Dict[str, List[Entry]] = {modality: [] for modality in modalities}
        self.stages: Dict[Entry, Stage] = {}
        for name, readout in schedule.outputs.items():
            for depth, stage in enumerate(readout.through.chain() if readout.through is not None else []):
                if stage.pair[0] in self.rows:
                    self.rows[stage.pair[0]].append((name, depth))
                    self.stages[(name, depth)] = stage
        self.inputs: Dict[Entry, Tensor] = {}

    def upstream(self, entry: Entry) -> Tuple[str, Optional[Entry]]:
        """The modality a stage's start rows come from, and its stage entry (None: the readout's own rows).

        Args:
            entry (Entry): A stage.

        Returns:
            *tuple*
        """
        name, depth = entry
        if depth == 0:
            return self.schedule.outputs[name].row, None
        return self.stages[(name, depth - 1)].pair[0], (name, depth - 1)

    def record_input(self, entry: Entry, members: Tensor, values: Tensor) -> None:
        """Keep the read values ``values`` ``[e, n]`` a stage's rows of the elements ``members`` started from.

        Args:
            entry (Entry): The stage.
            members (Tensor): ``[E]`` which elements.
            values (Tensor): The values.
        """
        if entry not in self.inputs:
            self.inputs[entry] = values.new_zeros(self.schedule.num_elements, values.shape[1])
        self.inputs[entry][members] = values

    def entry(self, stage: Stage) -> Entry:
        """The entry of ``stage`` (the object of a readout's chain), checked unique.

        Args:
            stage (Stage): A stage.

        Returns:
            *Entry*
        """
        found = [entry for entry, known in self.stages.items() if known is stage]
        if len(found) != 1:
            raise RuntimeError(f"A readout continues through a stage of {stage.pair[0]!r} whose rows were not streamed.")
        return found[0]

    def check_input(self, entry: Entry, values: Tensor) -> None:
        """Check that the values a readout continues ``stage`` with are those its streamed rows started from.

        Args:
            entry (Entry): The stage.
            values (Tensor): ``[E, n]`` the readout's values.
        """
        kept = self.inputs.get(entry)
        scale = values.abs().amax().clamp(min=torch.finfo(values.dtype).tiny)
        if kept is None or kept.shape != values.shape or bool(((kept - values).abs() > 1e-4 * scale).any()):
            raise RuntimeError(f"The readout {entry[0]!r} continues through a stage from values the backward pass did not "
                               "stream: explain this model with streaming=False.")


def streamable_stages(schedule: Schedule, streamed: Dict[str, bool]) -> Dict[str, List[str]]:
    """The stage modalities whose rows can be streamed after those of ``streamed``: read by no readout, each of their
    readouts' stages a self-attention stage starting from a streamed modality's rows (a readout's own, or an earlier
    streamed stage's), by the modalities they start from.

    Args:
        schedule (Schedule): A self-attention-only schedule.
        streamed (dict[str, bool]): The modalities streamed so far (the readouts' own).

    Returns:
        *dict[str, list of str]*: Each streamable stage modality's upstream modalities.
    """
    chains = [(readout, readout.through.chain()) for readout in schedule.outputs.values() if readout.through is not None]
    read = {modality for readout in schedule.outputs.values() for modality in readout.pair}
    found: Dict[str, List[str]] = {}
    candidates = sorted({stage.pair[0] for _, chain in chains for stage in chain} - read)
    while True:
        added = False
        for modality in [candidate for candidate in candidates if candidate not in found]:
            upstreams = [(readout.row if depth == 0 else chain[depth - 1].pair[0], stage.pair[1] == modality
                          and (depth > 0 or readout.row == readout.key)) for readout, chain in chains
                         for depth, stage in enumerate(chain) if stage.pair[0] == modality]
            if all(usable and (upstream in streamed or upstream in found) for upstream, usable in upstreams):
                found[modality], added = [upstream for upstream, _ in upstreams], True
        if not added:
            return found
