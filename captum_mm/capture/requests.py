"""What a lean attention call's backward is asked for and hands over: the request channel into its autograd backward,
open only while :func:`lean_backward` runs, and the sinks taking its head-reduced map (kept whole, or applied chunk by
chunk to readout rows: :mod:`captum_mm.attr._streaming`)."""

from dataclasses import dataclass, field
from typing import Callable, List, Literal, Optional, Protocol, Sequence, Tuple, TypeVar

from torch import Tensor

#: How a method reduces each call's heads when it is known by name (None: the method needs the probabilities).
Fusion = Literal["head_mean", "gradient_weighted", "grad_cam"]

Result = TypeVar("Result")


class MapSink(Protocol):
    """Where a lean backward hands its map chunk by chunk instead of keeping it (:mod:`captum_mm.attr._streaming`)."""

    def add(self, rows: slice, columns: slice, values: Tensor) -> None:
        """Take the map's ``values`` ``[B, rows, columns]`` (per sample of the call's batch).

        Args:
            rows (slice): The chunk's rows.
            columns (slice): Its columns (the keys they see; the others are 0).
            values (Tensor): The chunk.
        """

    def wants(self, rows: slice) -> bool:
        """Whether the map's ``rows`` change anything (a backward may skip computing those it does not want).

        Args:
            rows (slice): A chunk's rows.
        """

    def close(self) -> None:
        """The call's map is complete."""


@dataclass(frozen=True)
class LeanRequest:
    """What a lean call's backward computes while :func:`lean_backward` runs.

    Attributes:
        maps (LeanMaps): The call.
        fusion (Fusion): Its head reduction.
        rows, columns (Tensor): ``[B, Nq]``, ``[B, Nk]`` real tokens the explained element of each sample sees (True
                    for samples with none), for Grad-CAM's gradient mean.
        sink (MapSink, optional): Takes the map chunk by chunk; then no ``[B, Nq, Nk]`` map is kept. Default: None
    """

    maps: "LeanMaps"
    fusion: Fusion
    rows: Tensor
    columns: Tensor
    sink: Optional[MapSink] = None


@dataclass
class _Exchange:
    """The channel into a lean call's autograd backward, open only while :func:`lean_backward` runs: the request it
    serves and the map it computed."""

    request: Optional[LeanRequest] = None
    fused: Optional[Tensor] = None


@dataclass(frozen=True)
class LeanMaps:
    """One lean attention call, as captured.

    Attributes:
        probe (Tensor): A ``[1]`` leaf the call's output depends on: asking autograd for its gradient runs
                    the call's backward.
        shape (tuple): The call's ``(B, H, Nq, Nk)``.
    """

    probe: Tensor
    shape: Tuple[int, int, int, int]  # the call's B, H, Nq, Nk
    _exchange: _Exchange = field(default_factory=_Exchange, repr=False, compare=False)


def lean_backward(requests: Sequence[LeanRequest], backward: Callable[[], Result]) -> Tuple[Result, List[Optional[Tensor]]]:
    """Run ``backward``, an autograd pass reaching the calls of ``requests``, each computing what its request asks
    (any other lean call it reaches computes no map).

    Args:
        requests (sequence of LeanRequest): At most one a call.
        backward (Callable): Runs the autograd pass.

    Returns:
        *tuple*: ``backward``'s result, and each request's map ``[B, Nq, Nk]`` for its seed, in order (None for a
        request with a sink, which took the map).
    """
    for request in requests:
        request.maps._exchange.request = request
    try:
        result = backward()
        return result, [request.maps._exchange.fused for request in requests]
    finally:
        for request in requests:  # closed: no request, no map
            request.maps._exchange.request, request.maps._exchange.fused = None, None


class MapBuffer:
    """The :class:`MapSink` keeping the whole map ``values`` ``[B, Nq, Nk]`` (zero where no chunk wrote).

    Args:
        values (Tensor): Zeros of the map's shape.
    """

    def __init__(self, values: Tensor) -> None:
        self.values = values

    def add(self, rows: slice, columns: slice, values: Tensor) -> None:
        """Write the map's ``values`` ``[B, rows, columns]``.

        Args:
            rows (slice): The chunk's rows.
            columns (slice): Its columns.
            values (Tensor): The chunk.
        """
        self.values[:, rows, columns] = values

    def wants(self, rows: slice) -> bool:
        """Every row: the map is kept whole.

        Args:
            rows (slice): A chunk's rows.

        Returns:
            *bool*: True.
        """
        return True

    def close(self) -> None:
        """Nothing to do: the map is kept."""
