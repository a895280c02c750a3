"""Sharding under ``torchrun``: items dealt to the ranks, results gathered on rank 0.

Item ``j`` goes to rank ``j % world_size``; the gathered results come back in item order,
so a merged evaluation is exactly what one process computes. Without a process group
there is one rank, which keeps every item.
"""

import atexit
import os
from typing import Dict, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist

Item = TypeVar("Item")
Result = TypeVar("Result")


def init_distributed(backend: Optional[str] = None) -> bool:
    """Join the process group when started by ``torchrun`` (gloo on CPU, nccl on GPU); True if distributed."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return dist.is_initialized()
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
        atexit.register(_leave)
    return True


def _leave() -> None:
    """Leave the process group before the interpreter exits: a group torn down by the interpreter's own
    exit can abort a rank (SIGABRT) while its peers are still closing their connections."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_and_world() -> Tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 without a process group)."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main_process() -> bool:
    """Whether this is rank 0, the one that reports (and the only process without a process group)."""
    return rank_and_world()[0] == 0


def shard(items: Sequence[Item]) -> List[Tuple[int, Item]]:
    """The ``(position, item)`` pairs this rank evaluates: every ``world_size``-th one, from its rank."""
    rank, world = rank_and_world()
    return [(position, items[position]) for position in range(rank, len(items), world)]


def gather(local: Dict[int, Result]) -> Optional[List[Result]]:
    """Every rank's ``{position: result}`` merged, as a list in position order, on rank 0; None on
    the other ranks. A collective: every rank calls it."""
    rank, world = rank_and_world()
    if world > 1:
        parts: List[Optional[Dict[int, Result]]] = [None] * world
        dist.all_gather_object(parts, local)
        local = {position: result for part in parts if part is not None for position, result in part.items()}
    return [local[position] for position in sorted(local)] if rank == 0 else None
