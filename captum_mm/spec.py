"""What an adapter declares about a model's attention: one :class:`AttentionSpec` per attention
module, from which the capture, the schedule roles and the LRP site all derive."""

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

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
        map_tokens (Callable, optional): For a recorded module whose attention function is called once per window
                    (Qwen2.5-VL's windowed vision attention): the tokens of one map given the forward's arguments;
                    consecutive windows are joined block-diagonally (zero outside each window) into maps of that size.
    """

    module: nn.Module
    argument: Optional[str] = None  # name of a forward argument; None: the output
    index: Optional[int] = None  # element of a tuple output
    #: The attention weights the module's attention function returned during its forward (its calls'
    #: weights concatenated along the batch), for modules that discard them (Qwen2-VL's vision attention).
    recorded: bool = False
    #: Recorded per window: the tokens of one map (one image) given the forward's arguments; windows joined block-diagonally.
    map_tokens: Optional[Callable[[Dict[str, Any]], int]] = None

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
        query_norm, key_norm (nn.Module, optional): QK-norm (Qwen3, Gemma 3): a normalisation over each head's
                    ``d`` features applied to the projected queries (keys) before the rotary embedding; relevance
                    passes it unchanged. Default: None
        norm_spans_heads (bool): ``query_norm``/``key_norm`` normalise all heads' features together, before the heads
                    are split (InternViT's). Default: False
        score_cap (float, optional): The soft cap ``c`` of the scaled scores, ``c * tanh(scores / c)`` before the mask
                    (Gemma 2's ``attn_logit_softcapping``). Default: None (no cap)
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
    norm_spans_heads: bool = False
    score_cap: Optional[float] = None

    def __post_init__(self) -> None:
        if self.fused and len({id(self.query), id(self.key), id(self.value)}) > 1:
            raise ValueError("A fused projection is one module: pass it as query, key and value.")

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
