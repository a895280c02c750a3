"""What an adapter declares about a model's attention: one :class:`AttentionSpec` per attention
module, from which the capture, the schedule roles and the LRP site all derive."""

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from torch import nn
from transformers.pytorch_utils import Conv1D

#: A linear layer: ``nn.Linear``, or HF's ``Conv1D`` (GPT-2), which holds its weight transposed.
LinearModule = Union[nn.Linear, Conv1D]


@dataclass(frozen=True)
class TensorSource:
    """Where a tensor of the forward pass comes from: a module's output, or one of its arguments.

    Attributes:
        module (nn.Module): The module.
        argument (str, optional): The name of one of its forward arguments; None: its output.
        index (int, optional): The element of a tuple output.
        recorded (bool): The attention weights the module's attention function returned during its forward
                    (concatenated along the batch), for modules that discard them (Qwen2-VL's vision attention).
    """

    module: nn.Module
    argument: Optional[str] = None  # name of a forward argument; None: the output
    index: Optional[int] = None  # element of a tuple output
    #: The attention weights the module's attention function returned during its forward (its calls'
    #: weights concatenated along the batch), for modules that discard them (Qwen2-VL's vision attention).
    recorded: bool = False

    def of_output(self, output: Any) -> Any:
        """The tensor inside ``module``'s output (for a source that is an output)."""
        return output if self.index is None else output[self.index]


@dataclass(frozen=True)
class AttentionParts:
    """What LRP needs of an attention module whose first output is ``softmax(Q K^T) V`` (optionally
    projected).

    Attributes:
        query, key, value (LinearModule): The projections producing Q, K and V.
        heads (int): Number of (query) heads.
        projection (LinearModule, optional): Output projection applied inside the module.
        key_value_heads (int, optional): Number of key/value heads under grouped-query attention
                    (each repeated over ``heads / key_value_heads`` query heads). Default: ``heads``
        rotary (bool): Queries and keys are rotated by HF's rotary position embedding, the
                    ``(cos, sin)`` the module receives as ``position_embeddings``. Default: False
        fused (bool): ``query``, ``key`` and ``value`` are one projection whose output is Q, K and V
                    concatenated on the last dimension, in this order (GPT-2's ``c_attn``). Default: False
        query_norm, key_norm (nn.Module, optional): Per-head norms between the Q or K projection and the
                    attention's operand (QK-norm, ``[B, heads, N, d]`` out); relevance passes them unchanged.
    """

    query: LinearModule
    key: LinearModule
    value: LinearModule
    heads: int
    projection: Optional[LinearModule] = None
    key_value_heads: Optional[int] = None
    rotary: bool = False
    fused: bool = False
    query_norm: Optional[nn.Module] = None
    key_norm: Optional[nn.Module] = None

    def __post_init__(self) -> None:
        if self.fused and len({id(self.query), id(self.key), id(self.value)}) > 1:
            raise ValueError("A fused projection is one module: pass it as query, key and value.")
        if self.fused and (self.query_norm is not None or self.key_norm is not None):
            raise ValueError("Per-head norms after a fused projection are not supported.")

    @property
    def norms(self) -> Tuple[nn.Module, ...]:
        """The per-head query and key norms declared."""
        return tuple(norm for norm in (self.query_norm, self.key_norm) if norm is not None)

    @property
    def qkv_modules(self) -> Tuple[LinearModule, ...]:
        """The modules producing Q, K and V, each once."""
        return (self.query,) if self.fused else (self.query, self.key, self.value)


@dataclass(frozen=True, eq=False)
class AttentionSpec:
    """One attention module of the model.

    Attributes:
        name (str): The module's name in the explained model.
        module (nn.Module): The attention module (for LRP, its first output is replaced).
        probs (TensorSource): Where its probabilities ``[B, H, Nq, Nk]`` appear, live: the module's
                    own output (HF attention-interface modules, second under eager attention) or
                    that of its ``dropout`` (hand-written attention).
        roles (tuple): ``(query modality, key modality)`` of its first, second, ... call within
                    one forward pass; the last pair holds for further calls. A module shared by two
                    directions (LXMERT's cross-attention) has two.
        layer (str): The layer it belongs to, for schedules that group calls by layer.
        parts (AttentionParts, optional): Its projections, for LRP.
    """

    name: str
    module: nn.Module
    probs: TensorSource
    roles: Tuple[Tuple[str, str], ...]
    layer: str = ""
    parts: Optional[AttentionParts] = None

    def role(self, count: int) -> Tuple[str, str]:
        """``(query, key)`` modalities of the module's ``count``-th call in a forward pass."""
        return self.roles[min(count, len(self.roles) - 1)]


def module_names(model: nn.Module) -> Dict[nn.Module, str]:
    """Every module of a model and its qualified name.

    Args:
        model (nn.Module): The model.

    Returns:
        *dict*: Module to name.
    """
    return {module: name for name, module in model.named_modules()}


def self_attention(modality: str) -> Tuple[Tuple[str, str], ...]:
    """The roles of a module whose tokens attend to tokens of their own modality.

    Args:
        modality (str): The modality, e.g. ``"text"``.

    Returns:
        *tuple*: ``((modality, modality),)``, as ``AttentionSpec.roles`` takes it.
    """
    return ((modality, modality),)
