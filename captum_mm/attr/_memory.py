"""How many explained elements' relevance buffers fit in memory at once (``max_memory``).

The buffers that grow with the number of explained elements ``E`` are each element's fused map of every event
``[E, Nq, Nk]``, its relevance blocks, and, one event at a time, that event's mask of real entries and (methods
without a backward pass) the per-element copy of its stored maps. The model's own forward and backward are not
counted: they do not grow with ``E`` (one backward per slot, or one vectorised backward per group).
"""

import math
import os
import warnings
from typing import FrozenSet, List, Optional, Union, cast

import torch
from torch import Tensor

from captum_mm._precision import accumulation_dtype
from captum_mm.attr._streaming import streamed_modalities
from captum_mm.attr.engine import ForwardPass, Needs, is_vectorized
from captum_mm.capture.record import AttentionRecord
from captum_mm.relevance.propagation import self_attention_only
from captum_mm.relevance.schedule import AttentionEvent, Schedule

MaxMemory = Union[int, float, str, None]

#: ``max_memory="auto"``: this fraction of the memory available on the device when the explanation starts ...
AUTO_FRACTION = 4
#: ... and at most this many bytes: on CPU (and under lean capture) every slot is its own backward whatever the group
#: size, so larger groups save no time (benchmarks/README.md, "Long generations"); where a group shares one
#: vectorised backward (accelerators, eager capture) a larger explicit ``max_memory`` may be faster.
AUTO_CAP = 1 << 30


def memory_budget(max_memory: MaxMemory, device: torch.device) -> Optional[int]:
    """The bytes ``max_memory`` allows: a number of bytes as it is, ``"auto"`` a quarter of the memory available on
    ``device`` (:func:`available_memory`), at most 1 GiB; None or ``math.inf`` (or ``"auto"`` where the available
    memory is unknown) no limit.

    Args:
        max_memory (int, float, str or None): The method's ``max_memory``.
        device (torch.device): Where the relevance buffers live.

    Returns:
        *int or None*: The budget in bytes.
    """
    check_max_memory(max_memory)
    if max_memory == "auto":
        available = available_memory(device)
        return None if available is None else min(available // AUTO_FRACTION, AUTO_CAP)
    return None if max_memory is None or max_memory == math.inf else int(cast(float, max_memory))


def check_max_memory(max_memory: MaxMemory) -> None:
    """Raise a ValueError unless ``max_memory`` is a number of bytes (at least 1, ``math.inf`` for no limit),
    ``"auto"`` or None.

    Args:
        max_memory (int, float, str or None): The value to check.
    """
    if max_memory is None or max_memory == "auto":
        return
    if not isinstance(max_memory, (int, float)) or isinstance(max_memory, bool) or not max_memory >= 1:
        raise ValueError(f'max_memory must be a number of bytes (at least 1), "auto" or None (math.inf: no limit), '
                         f"got {max_memory!r}.")


def available_memory(device: torch.device) -> Optional[int]:
    """Bytes that can still be allocated on ``device``: ``MemAvailable`` of ``/proc/meminfo`` (else the free physical
    pages) on CPU; on CUDA the free memory plus what torch's caching allocator holds unused. None where unknown.

    Args:
        device (torch.device): The device.

    Returns:
        *int or None*: The available bytes.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def element_bytes(schedule: Schedule, record: AttentionRecord, events: List[AttentionEvent], itemsize: int,
                  needs: Needs, vectorized: bool, streamed: FrozenSet[str] = frozenset()) -> int:
    """An upper bound on one element's relevance buffers (the module's docstring lists them). Relevance blocks are
    counted 6 times where relevance matrices are propagated whole (the state, each update and the products making it)
    and 3 times where self-attention-only schedules keep only readout rows (a last layer's matrix min-max scaled by
    PartialLRP, with its temporaries),
    as measured on Llama and T5 for every method (benchmarks/README.md, "Long generations"). Streamed modalities keep
    no map of their events and no block: their rows, 4 copies (before, masked, product, kept) per readout.

    Args:
        schedule (Schedule): The schedule.
        record (AttentionRecord): The captured calls (their stored maps).
        events (list[AttentionEvent]): The events the method fuses.
        itemsize (int): Bytes per relevance value.
        needs (Needs): What the method needs (without a backward pass each element copies its stored maps).
        vectorized (bool): Whether a group's slots share one backward (then every slot's per-head gradients and
                    relevance at every map are alive at once).
        streamed (frozenset of str, optional): The modalities whose rows are streamed. Default: none

    Returns:
        *int*: Bytes.
    """
    areas = [schedule.sizes[event.query] * schedule.sizes[event.key] for event in events]
    kept = [0 if event.query in streamed else area for event, area in zip(events, areas)]
    probs = [record.calls[event.call].probs for event in events]
    heads = [0 if maps is None else maps.shape[1] for maps in probs]
    copied = [0 if needs.backward else count + 1 for count in heads]  # the copy and its fused map
    one_event = max((area * (1 + itemsize * copies) for area, copies in zip(kept, copied)), default=0)
    unstreamed = sum(size for modality, size in schedule.sizes.items() if modality not in streamed)
    rows = 4 * len(schedule.outputs) * sum(schedule.sizes[modality] for modality in streamed)
    blocks = (3 if self_attention_only(schedule) else 6) * unstreamed ** 2 + rows
    per_head = (int(needs.gradients) + int(needs.relevance)) * sum(area * count for area, count in zip(areas, heads)) if vectorized else 0
    return (sum(kept) + blocks + per_head) * itemsize + one_event


def slot_groups(forward: ForwardPass, events: List[AttentionEvent], needs: Needs, vectorized: Optional[bool],
                max_memory: MaxMemory, streaming: bool = False) -> List[Tensor]:
    """The backward slots in groups whose elements' relevance buffers fit in ``max_memory`` (one group when it
    allows any amount); a slot that alone needs more forms its own group, with a warning.

    Args:
        forward (ForwardPass): The captured forward pass, its targets and schedule.
        events (list[AttentionEvent]): The events the method fuses.
        needs (Needs): What the method needs.
        vectorized (bool, optional): The method's ``vectorized_backward``.
        max_memory (int, float, str or None): The method's ``max_memory``.
        streaming (bool, optional): Whether the rows are streamed where they can be. Default: False

    Returns:
        *list[Tensor]*: The slot indices of each group, in order.
    """
    selection = forward.selection
    slots = torch.arange(selection.grad_outputs.shape[0], device=selection.slot.device)
    budget = memory_budget(max_memory, forward.logits.device)
    if budget is None or not selection.num_elements:
        return [slots]
    itemsize = torch.empty((), dtype=accumulation_dtype(forward.logits.dtype)).element_size()
    calls = [forward.record.calls[event.call] for event in events]
    shared = needs.backward and is_vectorized(forward.logits, calls, vectorized)
    streamed = streamed_modalities(forward.schedule, events, calls, needs) if streaming else frozenset()
    per_slot = element_bytes(forward.schedule, forward.record, events, itemsize, needs, shared, streamed)
    per_slot *= int(torch.bincount(selection.slot).max())
    if per_slot > budget:
        allowed = f"max_memory={budget} bytes" if max_memory != "auto" else (
            f'max_memory="auto" ({budget} bytes: a quarter of the memory available, at most 1 GiB)')
        warnings.warn(f"{allowed} is less than one backward's explained elements need ({per_slot} bytes): they are "
                      "explained one backward at a time, which may exhaust the memory.", stacklevel=5)
    return list(slots.split(max(1, budget // per_slot)))
