"""The contract between architecture adapters and methods.

An adapter turns the attention calls captured during one forward pass into a
:class:`Schedule`: which modalities exist, which tokens of each are real (not
padding), the order in which attention events must be applied, and which row of
which relevance matrix is read out for each explained prediction. Methods only
ever see a schedule and tensors; they know nothing of any model.

Vocabulary: a *sample* is one row of the input batch; an *element* is one
explained prediction (one per sample for classifiers, one per explained object
query for DETR). All relevance tensors are batched over elements.
"""

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

import torch
from torch import Tensor


@dataclass(frozen=True)
class AttentionEvent:
    """One captured attention call seen as a step of the relevance schedule.

    Attributes:
        call (int): Index of the call in the capture record (forward order).
        query (str): Modality of the tokens that attend (rows of the map).
        key (str): Modality of the tokens attended to (columns of the map).
        name (str): Human-readable location, e.g. ``"x_layers.0 text->image"``.
    """

    call: int
    query: str
    key: str
    name: str = ""

    @property
    def is_self(self) -> bool:
        return self.query == self.key


@dataclass(frozen=True, eq=False)
class Stage:
    """An earlier stage whose tokens the read columns are functions of, token by token (a vision
    tower feeding a language model through a projector): the read values continue through that
    stage's own relevance, ``R^{g,patch} = R^{g,tok} . P . R^{pair}[rows, columns]``
    (docs/METHOD.md, "Stages joined by a projection").

    Attributes:
        pair (tuple[str, str]): The earlier stage's relevance block, e.g. ``("vision", "vision")``.
        rows (slice or Tensor): Its tokens the read columns come from, in order (a slice or ``[n_rows]`` indices).
        columns (slice or Tensor): Its tokens the output is over (a slice or indices).
        token_map (Tensor, optional): ``P``, ``[n_read, n_rows]`` weights of each earlier token in
                    each read column (a pooling such as pixel shuffle). Default: identity
        through (Stage, optional): A still earlier stage the columns continue through (Swin's stages). Default: None
    """

    pair: Tuple[str, str]
    rows: Union[slice, Tensor] = field(default_factory=lambda: slice(None))
    columns: Union[slice, Tensor] = field(default_factory=lambda: slice(None))
    token_map: Optional[Tensor] = None
    through: Optional["Stage"] = None

    def per_image(self, images: int, tokens: int) -> "Stage":
        """This stage over ``images`` images' sequences one after the other (``tokens`` each), each image's rows and
        columns as this one's, ``P`` block-diagonal.

        Args:
            images (int): The images.
            tokens (int): One image's tokens in this stage.

        Returns:
            *Stage*: Over every image.
        """
        if self.through is not None:
            raise ValueError("A stage continuing through an earlier one is not repeated per image.")
        offsets = torch.arange(images)[:, None] * tokens
        one = torch.arange(tokens)

        def repeated(chosen: Union[slice, Tensor]) -> Tensor:
            return (offsets + one[chosen].to(offsets.device)[None, :]).flatten()

        token_map = None if self.token_map is None else torch.block_diag(*[self.token_map] * images)
        return Stage(self.pair, repeated(self.rows), repeated(self.columns), token_map)

    def chain(self) -> List["Stage"]:
        """This stage and the earlier ones it continues through, in order.

        Returns:
            *list[Stage]*: From this stage back to the first.
        """
        return [self] + (self.through.chain() if self.through is not None else [])


@dataclass(frozen=True, eq=False)
class Readout:
    """Where one output (``"text"``, ``"image"``) is read: row ``rows[e]`` of ``R^{row, key}``,
    columns ``columns``, optionally reshaped to a ``grid``.

    Attributes:
        row (str): Modality of the token whose row is read (e.g. LXMERT's text ``[CLS]``).
        rows (Tensor): ``[E]`` index of that token for every element.
        key (str): Modality of the columns.
        columns (slice): Columns of ``key`` that belong to the output. Default: all
        grid (tuple[int, ...], optional): Reshape the columns to this spatial grid (``(h, w)``; tiled images
                    ``(tiles, h, w)``).
        positions (Tensor, optional): ``[E, N_columns]`` flat grid cell of each column,
                    when the columns are not in grid order (ViLT samples its patches).
        column_index (Tensor, optional): ``[E, n]`` the columns by index, per element, when
                    they are not the same slice for all (a VLM's image tokens); replaces ``columns``; -1 reads 0
                    (an element with fewer image tokens than the batch's most).
        column_mask (Tensor, optional): ``[E, N_key]`` the columns kept; the others read 0
                    (a VLM's text output without its image tokens).
        through (Stage, optional): Continue the read values through an earlier stage.
        spread (Tensor, optional): ``[n_columns, n]`` token map spreading the read values over ``n`` input positions
                    (Whisper's encoder frames over the features' time steps), before the ``grid``.
        row_weights (Tensor, optional): ``[E, N_row]`` read this weighting of the rows instead of row ``rows[e]``
                    (a pooled output: Swin's mean over its last tokens); nothing is zeroed as the row token's own.
    """

    row: str
    rows: Tensor
    key: str
    columns: slice = field(default_factory=lambda: slice(None))
    grid: Optional[Tuple[int, ...]] = None
    positions: Optional[Tensor] = None
    column_index: Optional[Tensor] = None
    column_mask: Optional[Tensor] = None
    through: Optional[Stage] = None
    spread: Optional[Tensor] = None
    row_weights: Optional[Tensor] = None

    @property
    def pair(self) -> Tuple[str, str]:
        return (self.row, self.key)

    def of_elements(self, index: Tensor) -> "Readout":
        """The readout of the elements ``index`` only."""
        def chosen(values: Optional[Tensor]) -> Optional[Tensor]:
            return None if values is None else values[index]

        return replace(self, rows=self.rows[index], positions=chosen(self.positions), column_index=chosen(self.column_index),
                       column_mask=chosen(self.column_mask), row_weights=chosen(self.row_weights))


@dataclass
class Schedule:
    """Everything a method needs to turn fused attention maps into relevance.

    Attributes:
        sizes (dict[str, int]): Number of tokens of each modality.
        masks (dict[str, Tensor]): ``[E, N]`` boolean masks of real tokens per
                    modality, one row per element (of a causal modality: those it sees).
        steps (list[tuple[AttentionEvent, ...]]): Events in the order the rules
                    apply. Events of one step are applied in parallel: every
                    update of the step is computed from the state before it
                    (LXMERT's two cross-attention directions).
        outputs (dict[str, Readout]): Output name (``"text"``, ``"image"``) to where
                    it is read.
        element_sample (Tensor): ``[E]`` sample index of every element.
        causal (frozenset[str]): Modalities whose tokens see only themselves and earlier
                    tokens (a decoder's): each element's mask of such a modality ends at its
                    readout row, so no element sees tokens after the one it explains.
                    Default: none
        unscheduled_attentions (frozenset of tuple[str, str]): ``(query, key)`` modality pairs the
                    model attends with outside the scheduled events (LXMERT's last x-layer's
                    image->text attention, left out since it cannot reach the readout). Eq. 11
                    decides from them as from the scheduled events. Default: none
        segments (dict[str, Tensor]): ``[E, N]`` segment of each token of a modality whose tokens attend
                    within their segment only (a prompt's images in the vision modality): what is scaled
                    per matrix (partial LRP) is scaled per segment. Default: none
    """

    sizes: Dict[str, int]
    masks: Dict[str, Tensor]
    steps: List[Tuple[AttentionEvent, ...]]
    outputs: Dict[str, Readout]
    element_sample: Tensor
    causal: FrozenSet[str] = frozenset()
    unscheduled_attentions: FrozenSet[Tuple[str, str]] = frozenset()
    segments: Dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_elements(self) -> int:
        return int(self.element_sample.shape[0])

    @property
    def pairs(self) -> List[Tuple[str, str]]:
        """The ``(row, key)`` relevance blocks the outputs read (and the earlier stages they go through), each once."""
        pairs = [spec.pair for spec in self.outputs.values()]
        pairs += [stage.pair for spec in self.outputs.values() if spec.through is not None for stage in spec.through.chain()]
        return list(dict.fromkeys(pairs))

    @property
    def events(self) -> List[AttentionEvent]:
        return [event for step in self.steps for event in step]

    def last_event(self, query: str, key: str) -> Optional[AttentionEvent]:
        """The last event whose queries are ``query`` tokens and keys ``key`` tokens."""
        matching = [e for e in self.events if e.query == query and e.key == key]
        return matching[-1] if matching else None

    def self_events(self, modality: str, before: Optional[AttentionEvent] = None) -> List[AttentionEvent]:
        """Self-attention events of ``modality`` in order, optionally only those before ``before``."""
        events = self.events
        if before is not None:
            events = events[: events.index(before)]
        return [e for e in events if e.is_self and e.query == modality]

    def of_elements(self, index: Tensor) -> "Schedule":
        """The schedule of the elements ``index`` only (the same events)."""
        return replace(self, masks={name: mask[index] for name, mask in self.masks.items()},
                       outputs={name: readout.of_elements(index) for name, readout in self.outputs.items()},
                       element_sample=self.element_sample[index],
                       segments={name: segment[index] for name, segment in self.segments.items()})

    def starting_at(self, start_layer: int) -> "Schedule":
        """A copy without each modality's first ``start_layer`` self-attention events.

        Cross-attention events are always kept. ``start_layer=0`` keeps everything.
        """
        if start_layer == 0:
            return self
        seen: Counter = Counter()
        steps = []
        for step in self.steps:
            kept = []
            for event in step:
                if event.is_self:
                    seen[event.query] += 1
                    if seen[event.query] <= start_layer:
                        continue
                kept.append(event)
            if kept:
                steps.append(tuple(kept))
        return replace(self, steps=steps)


def seen_positions(outputs: Dict[str, Readout], modality: str, size: int) -> Tensor:
    """The positions of a causal ``modality`` each element's readout row sees: up to that row.

    Args:
        outputs (dict[str, Readout]): The readouts; those read from a row of ``modality`` give the rows.
        modality (str): The causal modality.
        size (int): Its number of tokens.

    Returns:
        *Tensor*: ``[E, size]`` booleans.

    Raises:
        ValueError: No output is read from a row of ``modality``.
    """
    rows = [readout.rows for readout in outputs.values() if readout.row == modality]
    if not rows:
        raise ValueError(f"No output is read from a row of the causal modality {modality!r}.")
    return torch.arange(size, device=rows[0].device)[None] <= rows[0][:, None]
