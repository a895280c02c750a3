"""The parameters a forward used, in models dispatched by accelerate (``cpu_offload``, ``disk_offload``,
``dispatch_model``, ``from_pretrained(device_map=...)``).

Accelerate's ``AlignDevicesHook`` with ``offload=True`` wraps a module's ``forward``: it loads the module's
weights from the hook's ``weights_map`` as the forward starts and puts them back on the ``meta`` device as it
ends, before any PyTorch forward hook runs. A rule reading ``module.weight`` in the backward would find a meta
tensor (whose products are uninitialised memory on CPU, not an error); it reads the forward's value from the
hook's map instead, one module at a time, so the model stays offloaded.
"""

from typing import Any, List, Optional

import torch
from torch import Tensor, nn


def accelerate_hooks(module: nn.Module) -> List[Any]:
    """The accelerate hooks attached to ``module`` itself (``SequentialHook`` s unpacked), in order.

    Args:
        module (nn.Module): The module.

    Returns:
        *list*: Its hooks; empty for a module accelerate did not dispatch.
    """
    return _unpacked(getattr(module, "_hf_hook", None))


def _unpacked(hook: Any) -> List[Any]:
    nested = getattr(hook, "hooks", None)  # a SequentialHook's
    if hook is None or nested is None:
        return [] if hook is None else [hook]
    return [inner for child in nested for inner in _unpacked(child)]


def forward_parameter(module: nn.Module, name: str) -> Tensor:
    """``module``'s parameter ``name`` as its forward used it: the parameter itself, or, where accelerate
    offloaded it (a meta tensor between forwards), its value in the module's hook's ``weights_map`` on the hook's
    execution device, in the parameter's dtype.

    Args:
        module (nn.Module): The module.
        name (str): The parameter's name in the module (``"weight"``).

    Returns:
        *Tensor*: The parameter's value.

    Raises:
        ValueError: The parameter is on the meta device and no accelerate hook of ``module`` holds its value
                    (e.g. a parent module's hook loads it: accelerate's ``preload_module_classes``).
    """
    parameter = getattr(module, name)
    if parameter.device.type != "meta":
        return parameter
    for hook in accelerate_hooks(module):
        if getattr(hook, "offload", False) and getattr(hook, "weights_map", None) is not None:
            try:
                value = hook.weights_map[name]
            except KeyError:
                continue
            return value.to(device=hook.execution_device, dtype=parameter.dtype)
    raise ValueError(
        f"{type(module).__name__}.{name} is on the meta device outside its forward and no accelerate hook of that module "
        "holds its value, so the LRP rules cannot read the weight the forward used. Offloaded modules are supported "
        "where each module's own hook offloads its weights (cpu_offload, disk_offload, dispatch_model and "
        "from_pretrained with a device_map); a parent's hook loading its submodules' weights "
        "(accelerate's preload_module_classes) is not."
    )


def execution_device(model: nn.Module) -> Optional[torch.device]:
    """Where accelerate's hooks run a dispatched model's first computing module (they move the inputs there).

    Args:
        model (nn.Module): The model.

    Returns:
        *torch.device*: The first execution device of its hooks, in module order; None for a model accelerate did
        not dispatch.
    """
    devices = (hook.execution_device for module in model.modules() for hook in accelerate_hooks(module))
    device = next((device for device in devices if device is not None), None)
    return None if device is None else torch.device(device)
