"""The model replayed for Captum's methods (:mod:`captum_mm.attr.captum_baselines`): its attributed inputs, their
baselines and the layers first reading them (:class:`ReplayInputs`), a forward giving each sample's explained logit
(:class:`Replay`), and FeatureAblation's groups and their relevance spread evenly over each group's entries."""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor, nn

from captum_mm.generation import Continuation
from captum_mm.relevance.schedule import Schedule

Grid = Optional[Tuple[int, ...]]


@dataclass
class ReplayInputs:
    """What Captum's methods attribute: the token ids entering the word embeddings and the floating forward arguments
    carrying an output, with their baselines and the layers first reading them.

    Attributes:
        ids (str, optional): The argument whose ids enter the word embeddings (None: the model has none).
        floats (list of str): Floating, batch-first arguments carrying an output.
        layers (list of nn.Module): The word embeddings (when ``ids``), then the first layer reading each of ``floats``.
        outputs (dict): The output each of ``floats`` carries.
        baseline_token (int): The baseline's token id.
        kept_tokens (tuple of int): Token ids the baseline keeps (image placeholders).
    """

    ids: Optional[str]
    floats: List[str]
    layers: List[nn.Module]
    outputs: Dict[str, str]
    baseline_token: int
    kept_tokens: Tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def probe(cls, model: nn.Module, arguments: Dict[str, Any], argument_outputs: Mapping[str, str],
              baseline_token: int) -> "ReplayInputs":
        """One forward of ``model(**arguments)`` (no gradient) finding the argument the word embeddings read and the
        first leaf layer reading each floating argument that carries an output (one none reads is refused)."""
        batch = next(v.shape[0] for v in arguments.values() if isinstance(v, Tensor) and v.dim())
        floats = [name for name, value in arguments.items() if isinstance(value, Tensor) and value.is_floating_point()
                  and value.dim() >= 3 and value.shape[0] == batch and name in argument_outputs]
        embeddings = cast(Any, model).get_input_embeddings()
        readers: Dict[str, nn.Module] = {}
        ids: List[str] = []

        def on_input(module: nn.Module, args: Tuple[Any, ...]) -> None:
            for name, value in arguments.items():
                if args and args[0] is value:
                    if module is embeddings and not ids:
                        ids.append(name)
                    elif name in floats and name not in readers and not list(module.children()):
                        readers[name] = module

        handles = [module.register_forward_pre_hook(on_input) for module in model.modules()]
        try:
            with torch.no_grad():
                model(**arguments)
        finally:
            for handle in handles:
                handle.remove()
        unread = [name for name in floats if name not in readers]
        if unread:
            raise TypeError(f"Captum's layer methods attribute the first layer reading each input; no layer of this "
                            f"{type(model).__name__} takes {unread} as its input.")
        config = getattr(model, "config", None)
        kept = tuple(t for t in (getattr(config, "image_token_id", None), getattr(config, "image_token_index", None))
                     if isinstance(t, int))
        return cls(ids[0] if ids else None, floats, ([embeddings] if ids else []) + [readers[n] for n in floats],
                   {name: argument_outputs[name] for name in floats}, baseline_token, kept)

    def names(self) -> List[str]:
        """The attributed arguments, in Captum's order: the ids, then the floats."""
        return ([self.ids] if self.ids is not None else []) + self.floats

    def values(self, arguments: Dict[str, Any]) -> Tuple[Tensor, ...]:
        """The attributed arguments' values."""
        return tuple(arguments[name] for name in self.names())

    def baselines(self, arguments: Dict[str, Any]) -> Tuple[Tensor, ...]:
        """The baseline of each attributed argument: ids replaced by :attr:`baseline_token` but :attr:`kept_tokens`,
        floats by zeros."""
        floats = tuple(torch.zeros_like(arguments[name]) for name in self.floats)
        if self.ids is None:
            return floats
        ids = arguments[self.ids]
        kept = torch.isin(ids, torch.tensor(self.kept_tokens, dtype=ids.dtype, device=ids.device))
        return (torch.where(kept, ids, torch.full_like(ids, self.baseline_token)), *floats)


class Replay:
    """``replay(*attributed, *others, [ids,] weights)``: the model on the attributed arguments (the others expanded as
    Captum expands them), giving each row's explained logit, ``sum(logits * weights)`` over all but the batch dimension;
    for generated tokens the logits are each continuation token's, ``[B, C]``, as
    :func:`~captum_mm.generation.generation_forward` gives them (the ids expanded with the rows).

    Args:
        model (nn.Module): The model.
        logits_of (Callable): Its output to its logits (the adapter's).
        arguments (dict): Its forward arguments.
        inputs (ReplayInputs): The attributed ones.
        weights (Tensor): ``[B, ...]`` shaped as the logits: the explained logit of each sample (one backward slot).
        schedule (Schedule): The explained elements' schedule (the outputs' grids).
        continuation (Continuation, optional): The generated tokens explained. Default: None
    """

    def __init__(self, model: nn.Module, logits_of: Callable[[Any], Tensor], arguments: Dict[str, Any],
                 inputs: ReplayInputs, weights: Tensor, schedule: Schedule,
                 continuation: Optional[Continuation] = None) -> None:
        self.model, self.logits_of, self.arguments, self.inputs = model, logits_of, arguments, inputs
        self.weights, self.schedule, self.continuation = weights, schedule, continuation
        batch = weights.shape[0]
        attributed = set(inputs.names())
        self.others = [name for name, value in arguments.items() if name not in attributed
                       and isinstance(value, Tensor) and value.dim() and value.shape[0] == batch]

    def additional(self) -> Tuple[Tensor, ...]:
        """Captum's ``additional_forward_args``: the batch-first arguments not attributed, then the weights."""
        ids = () if self.continuation is None else (self.continuation.ids,)
        return (*(self.arguments[name] for name in self.others), *ids, self.weights)

    def grids(self) -> Dict[str, Grid]:
        """The grid of the output each floating attributed argument carries."""
        return {name: self.schedule.outputs[output].grid if output in self.schedule.outputs else None
                for name, output in self.inputs.outputs.items()}

    def __call__(self, *tensors: Tensor) -> Tensor:
        names = self.inputs.names() + self.others
        output = self.model(**{**self.arguments, **dict(zip(names, tensors))})
        logits = self.logits_of(output)
        if self.continuation is not None:  # as generation_forward's: each continuation token's logit
            start, ids = self.continuation.prompt_length - 1, tensors[-2]
            logits = logits[:, start:-1].gather(-1, ids[..., None])[..., 0]
        if logits.shape[1:] != tensors[-1].shape[1:]:
            raise TypeError(f"Captum's baselines replay {type(self.model).__name__} itself: its logits "
                            f"{tuple(logits.shape[1:])} per sample differ from forward_func's {tuple(tensors[-1].shape[1:])}; "
                            "pass a forward_func returning the model's own logits (or the model).")
        return (logits * tensors[-1]).flatten(1).sum(1)


def group_masks(values: Sequence[Tensor], baselines: Sequence[Tensor], inputs: ReplayInputs, grids: Dict[str, Grid],
                block: int) -> Tuple[Tensor, ...]:
    """FeatureAblation's groups, one mask a value shaped like it: each token id differing from its baseline a group
    (numbered by position over the batch; the others all group 0), then per output the ``block x block`` blocks of its
    grid (runs of ``block**2`` tokens without one), shared by the floating arguments carrying it.

    Args:
        values (sequence of Tensor): The attributed arguments (:meth:`ReplayInputs.values`).
        baselines (sequence of Tensor): Their baselines.
        inputs (ReplayInputs): Which they are.
        grids (dict): Each floating argument's output grid (:meth:`Replay.grids`).
        block (int): The image blocks' side.

    Returns:
        *tuple of Tensor*: Integer masks.
    """
    masks: List[Tensor] = []
    offset = 1
    if inputs.ids is not None:
        changed = values[0] != baselines[0]
        numbers = changed.any(0).long().cumsum(0)
        masks.append(torch.where(changed, numbers.expand_as(changed), 0))
        offset += int(numbers[-1]) if numbers.numel() else 0
        values = values[1:]
    starts: Dict[str, int] = {}
    for name, value in zip(inputs.floats, values):
        output = inputs.outputs[name]
        if output not in starts:
            starts[output] = offset
        blocks = _blocks(value, grids.get(name), block)
        masks.append(starts[output] + blocks)
        offset = max(offset, starts[output] + int(blocks.max()) + 1)
    return tuple(masks)


def _blocks(value: Tensor, grid: Grid, block: int) -> Tensor:
    """Each entry's block index, shaped like ``value``: pixels ``[B, C, H, W]`` on a grid, else tokens ``[B, N, ...]``
    (on the grid when it holds exactly ``N`` cells)."""
    if value.dim() == 4 and grid is not None and len(grid) == 2:
        height, width = value.shape[-2:]
        rows = torch.arange(height, device=value.device) * grid[0] // height // block
        columns = torch.arange(width, device=value.device) * grid[1] // width // block
        index = rows[:, None] * math.ceil(grid[1] / block) + columns[None, :]
        return index.expand_as(value)
    tokens = torch.arange(value.shape[1], device=value.device)
    if grid is not None and len(grid) == 2 and grid[0] * grid[1] == value.shape[1]:
        index = tokens // grid[1] // block * math.ceil(grid[1] / block) + tokens % grid[1] // block
    else:
        index = tokens // (block * block)
    return index.reshape(1, -1, *[1] * (value.dim() - 2)).expand_as(value)


def spread_over_groups(attributions: Sequence[Tensor], masks: Sequence[Tensor]) -> Tuple[Tensor, ...]:
    """FeatureAblation's attributions (every entry of a group holding the group's change) divided by the group's entry
    count in its sample, over all inputs: summing a token's (region's, patch's) entries then gives its even share.

    Args:
        attributions (sequence of Tensor): ``[B, ...]`` per input.
        masks (sequence of Tensor): Their groups, shaped like them (:func:`group_masks`).

    Returns:
        *tuple of Tensor*: The spread attributions.
    """
    batch = attributions[0].shape[0]
    flat = [mask.expand_as(a).reshape(batch, -1) for a, mask in zip(attributions, masks)]
    groups = int(max(int(m.max()) for m in flat)) + 1
    counts = torch.zeros(batch, groups, dtype=torch.float64, device=flat[0].device)
    for mask in flat:
        counts.scatter_add_(1, mask, torch.ones_like(mask, dtype=torch.float64))
    return tuple((a.reshape(batch, -1) / counts.gather(1, m).to(a.dtype)).reshape(a.shape)
                 for a, m in zip(attributions, flat))
