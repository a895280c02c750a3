"""Removable handles, Zennit-style: everything done to a model can be undone, safely twice."""

from typing import Any, Callable, Dict, Optional, Tuple

from torch import nn

# Signatures of the forward hooks this package registers: (module, args[, kwargs][, output]) -> replacement or None.
ForwardHook = Callable[[nn.Module, Tuple[Any, ...], Any], Any]
ForwardPreHook = Callable[[nn.Module, Tuple[Any, ...]], Any]
KwargsPreHook = Callable[[nn.Module, Tuple[Any, ...], Dict[str, Any]], Any]
KwargsHook = Callable[[nn.Module, Tuple[Any, ...], Dict[str, Any], Any], Any]


class HandleList(list):
    """Removable handles gathered in one list; ``remove()`` is safe to call twice."""

    def remove(self) -> None:  # type: ignore[override]
        while self:
            self.pop().remove()


class Restore:
    """A handle that runs ``undo`` once when removed."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo: Optional[Callable[[], None]] = undo

    def remove(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()
