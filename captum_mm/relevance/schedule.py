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
from typing import Dict, List, Optional, Tuple

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
class Readout:
    """Where one output (``"text"``, ``"image"``) is read: row ``rows[e]`` of ``R^{row, key}``,
    columns ``columns``, optionally reshaped to a ``grid``.

    Attributes:
        row (str): Modality of the token whose row is read (e.g. LXMERT's text ``[CLS]``).
        rows (Tensor): ``[E]`` index of that token for every element.
        key (str): Modality of the columns.
        columns (slice): Columns of ``key`` that belong to the output. Default: all
        grid (tuple[int, int], optional): Reshape the columns to this spatial grid.
        positions (Tensor, optional): ``[E, N_columns]`` flat grid cell of each column,
                    when the columns are not in grid order (ViLT samples its patches).
    """

    row: str
    rows: Tensor
    key: str
    columns: slice = field(default_factory=lambda: slice(None))
    grid: Optional[Tuple[int, int]] = None
    positions: Optional[Tensor] = None

    @property
    def pair(self) -> Tuple[str, str]:
        return (self.row, self.key)


@dataclass
class Schedule:
    """Everything a method needs to turn fused attention maps into relevance.

    Attributes:
        sizes (dict[str, int]): Number of tokens of each modality.
        masks (dict[str, Tensor]): ``[E, N]`` boolean masks of real tokens per
                    modality, one row per element.
        steps (list[tuple[AttentionEvent, ...]]): Events in the order the rules
                    apply. Events of one step are applied in parallel: every
                    update of the step is computed from the state before it
                    (LXMERT's two cross-attention directions).
        outputs (dict[str, Readout]): Output name (``"text"``, ``"image"``) to where
                    it is read.
        element_sample (Tensor): ``[E]`` sample index of every element.
    """

    sizes: Dict[str, int]
    masks: Dict[str, Tensor]
    steps: List[Tuple[AttentionEvent, ...]]
    outputs: Dict[str, Readout]
    element_sample: Tensor

    @property
    def num_elements(self) -> int:
        return int(self.element_sample.shape[0])

    @property
    def pairs(self) -> List[Tuple[str, str]]:
        """The ``(row, key)`` relevance blocks the outputs read, each once."""
        return list(dict.fromkeys(spec.pair for spec in self.outputs.values()))

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
