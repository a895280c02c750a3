"""The one place where Captum's private helpers are imported."""

from captum._utils.common import (  # noqa: F401
    _format_additional_forward_args,
    _format_output,
    _format_tensor_into_tuples,
    _is_tuple,
)
from captum.log import log_usage  # noqa: F401
from captum.attr._core.llm_attr import (  # noqa: F401
    DEFAULT_GEN_ARGS,
    BaseLLMAttribution,
    _convert_ids_to_pretty_tokens,
)
