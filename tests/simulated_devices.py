"""A second device on a CPU-only machine, for device-map tests: tensors "on" it compute on the CPU but report the
``lazy`` device, and every operation refuses to mix devices as torch does between two real devices.

``with simulated_devices():`` makes ``tensor.to("lazy")`` and ``module.to("lazy")`` (accelerate's ``dispatch_model``
with ``"lazy"`` in the device map) place tensors on the stand-in device (:class:`Placed`: a wrapper holding the CPU
values), so a model split over ``cpu`` and ``lazy`` runs with real numbers, while any operation combining tensors of
both devices raises, as torch raises for ``cpu`` and ``cuda``: 0-dim CPU tensors and CPU index tensors may meet
tensors of any device, nothing else may. ``lazy`` (torch's lazy-tensor device, unused otherwise) is the stand-in
because a CPU build's autograd engine can run a backward on it; ``cuda`` cannot be faked there.
"""

from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

STAND_IN = torch.device("lazy")
_ATEN = torch.ops.aten
#: Operations whose index tensors may stay on the CPU whatever the indexed tensor's device.
_INDEXING = (_ATEN.index.Tensor, _ATEN.index_put_.default, _ATEN.index_put.default, _ATEN._index_put_impl_.default)
_COPIES = (_ATEN._to_copy.default, _ATEN.copy_.default)


class Placed(Tensor):
    """A tensor on the stand-in device: its values (``values``, on the CPU) and the device it reports."""

    values: Tensor

    @staticmethod
    def __new__(cls, values: Tensor, requires_grad: Optional[bool] = None) -> "Placed":
        values = values.values if isinstance(values, Placed) else values  # accelerate rebuilds parameters this way
        placed = Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, values.shape, strides=values.stride(), storage_offset=values.storage_offset(), dtype=values.dtype,
            device=STAND_IN, requires_grad=values.requires_grad if requires_grad is None else requires_grad)
        placed.values = values
        return placed

    def __repr__(self) -> str:  # type: ignore[override]
        return f"Placed({self.values!r})"

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Tuple = (), kwargs: Optional[Dict] = None) -> Any:
        return _run(func, args, kwargs or {})


def _counted(func: Any, args: Tuple, kwargs: Dict) -> Any:
    if func in _INDEXING:
        return (args[0], *args[2:], *[index for index in args[1] if index is not None and index.device.type != "cpu"])
    return args, kwargs


def _devices(func: Any, args: Tuple, kwargs: Dict) -> set:
    tensors = [t for t in tree_flatten(_counted(func, args, kwargs))[0] if isinstance(t, Tensor)]
    return {t.device for t in tensors if isinstance(t, Placed) or not (t.dim() == 0 and t.device.type == "cpu")}


def _values(tensor: Any) -> Any:
    return tensor.values if isinstance(tensor, Placed) else tensor


def _run(func: Any, args: Tuple, kwargs: Dict) -> Any:
    kwargs = dict(kwargs)
    target = kwargs.get("device")
    devices = _devices(func, args, kwargs)
    if target is not None:
        target = torch.device(target)
        if target.type == STAND_IN.type:
            kwargs["device"] = torch.device("cpu")
    elif func is _ATEN.copy_.default:
        target = args[0].device
    elif len(devices) > 1 and func not in _COPIES:
        raise RuntimeError(f"Expected all tensors to be on the same device, but {func} got tensors on "
                           f"{sorted(str(device) for device in devices)}")
    else:
        target = next(iter(devices), torch.device("cpu"))
    result = func(*tree_map(_values, args), **tree_map(_values, kwargs))
    if target.type != STAND_IN.type:
        return result
    return tree_map(lambda t: Placed(t) if isinstance(t, Tensor) and not isinstance(t, Placed) else t, result)


class _Placing(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: Tuple = (), kwargs: Optional[Dict] = None) -> Any:
        return _run(func, args, kwargs or {})


class _Factories(TorchFunctionMode):
    """``torch.tensor(data, device="lazy")`` builds on the CPU, then moves (torch builds it out of the dispatcher's
    sight)."""

    BUILDERS: Tuple[Callable, ...] = (torch.tensor, torch.as_tensor)

    def __torch_function__(self, func: Any, types: Any, args: Tuple = (), kwargs: Optional[Dict] = None) -> Any:
        kwargs = dict(kwargs or {})
        device = kwargs.get("device")
        if func in self.BUILDERS and device is not None and torch.device(device) == STAND_IN:
            kwargs.pop("device")
            return func(*args, **kwargs).to(STAND_IN)
        return func(*args, **kwargs)


@contextmanager
def simulated_devices() -> Iterator[None]:
    """Inside, ``lazy`` is a second device holding real values (see the module's docstring)."""
    with _Factories(), _Placing():
        yield


def cpu_values(tensor: Tensor) -> Tensor:
    """The values of a tensor on either device, as a plain CPU tensor."""
    return tensor.values if isinstance(tensor, Placed) else tensor
