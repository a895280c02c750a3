"""Captum's LLM attribution API over captum_mm's attention explanations of generated text.

:class:`AttentionLLMAttribution` takes Captum's interpretable inputs (``TextTokenInput``,
``TextTemplateInput``) and returns Captum's ``LLMAttributionResult``, so Captum's
``plot_token_attr`` and ``plot_seq_attr`` work unchanged, next to Captum's own
``LLMAttribution`` and ``LLMGradientAttribution`` on the same model. For a VLM, Captum's
``ImageMaskInput`` (an image, its segments and the processor building the prompt) gives each
segment's relevance, and ``plot_image_heatmap`` works too.
"""

from typing import Any, Dict, List, Optional, Union, cast

import torch
import torch.nn.functional as F
from captum.attr import ImageMaskInput, LLMAttributionResult, TextTemplateInput, TextTokenInput
from torch import Tensor

from captum_mm._compat import DEFAULT_GEN_ARGS, BaseLLMAttribution, _convert_ids_to_pretty_tokens, log_usage
from captum_mm.attr import AttentionAttribution
from captum_mm._offload import execution_device

__all__ = ["AttentionLLMAttribution"]


class AttentionLLMAttribution(BaseLLMAttribution):
    r"""
    Attention-based attribution of a language model's generated tokens (any captum_mm
    method, e.g. the relevancy of Chefer, Gur & Wolf, ICCV 2021) in Captum's LLM API.

    Each output token gets the relevance of every input feature: a token of a
    ``TextTokenInput``, a value of a ``TextTemplateInput`` (the relevance of the
    tokens it spans, summed; values sharing a mask id each get their group's sum, as
    Captum's ``format_attr`` spreads it), or a segment of an ``ImageMaskInput`` (the
    image relevance on the patch grid spread evenly over each patch's pixels, summed
    over the segment's; the patch grid is taken to cover the whole image, as it does
    when the processor resizes without cropping). The output tokens' probabilities
    come with the result.

    Examples::

        >>> explainer = AttentionLLMAttribution(GenericAttention(model), tokenizer)
        >>> inp = TextTokenInput("What color is the circle?", tokenizer)
        >>> result = explainer.attribute(inp, target="blue")
        >>> result.plot_token_attr(show=True)
    """

    SUPPORTED_METHODS = (AttentionAttribution,)
    SUPPORTED_INPUTS = (TextTokenInput, TextTemplateInput, ImageMaskInput)

    def __init__(self, explainer: AttentionAttribution, tokenizer: Any) -> None:
        r"""
        Args:
            explainer (AttentionAttribution): A captum_mm method built on the generative
                        model itself (``forward_func`` is the HuggingFace model).
            tokenizer: The model's HuggingFace tokenizer (a fast one for template inputs,
                        whose values are mapped to tokens by character offsets).
        """
        super().__init__(explainer, tokenizer)
        self.explainer = explainer
        dispatched = execution_device(explainer.model)  # accelerate's: its first parameters may be offloaded (meta)
        if dispatched is not None:
            self.device = dispatched

    @log_usage()
    def attribute(
        self,
        inp: Union[TextTokenInput, TextTemplateInput, ImageMaskInput],
        target: Union[str, Tensor, None] = None,
        gen_args: Optional[Dict[str, Any]] = None,
    ) -> LLMAttributionResult:
        r"""
        Args:
            inp (TextTokenInput, TextTemplateInput or ImageMaskInput): The prompt (for
                        an image, its processor's output is the prompt).
            target (str or Tensor, optional): The response to explain (a string, encoded
                        without special tokens, or its token ids). Default: None (what the
                        model generates with ``gen_args``)
            gen_args (dict, optional): Arguments of ``model.generate`` when ``target`` is
                        None. Default: None (Captum's defaults: greedy, 25 new tokens)

        Returns:
            LLMAttributionResult: ``token_attr`` ``[output tokens, input features]``,
            ``seq_attr`` its sum over output tokens, and the output tokens' probabilities.
        """
        if not isinstance(inp, self.SUPPORTED_INPUTS):
            raise TypeError(f"inp must be a TextTokenInput, TextTemplateInput or ImageMaskInput, got {type(inp).__name__}.")
        if target is not None and gen_args is not None:
            raise ValueError("gen_args are used only when target is None (the response is generated).")
        prompt, features = self._prompt_and_features(inp)
        if target is None:
            explanation = self.explainer.explain(prompt, generate=True, generation_args=gen_args or DEFAULT_GEN_ARGS)
        else:
            given = self._get_target_tokens(inp, target).to(self.device).reshape(-1)
            if not given.numel():
                raise ValueError(f"The target is empty ({target!r} holds no token): give the response to explain, or "
                                 "target=None to explain what the model generates.")
            explanation = self.explainer.explain(prompt, continuation=given[None])
        generated = cast(Tensor, explanation.generated_ids)[0]
        explained = generated >= 0
        target_ids = generated[explained]
        if isinstance(inp, ImageMaskInput):
            token_attr = segment_relevance(explanation.image[0, explained], inp)
        else:
            token_attr = inp.format_attr(explanation.text[0, explained] @ cast(Tensor, features).to(explanation.text.dtype))
        return LLMAttributionResult(
            seq_attr=token_attr.sum(0),
            token_attr=token_attr,
            input_tokens=list(inp.values),
            output_tokens=_convert_ids_to_pretty_tokens(target_ids, self.tokenizer),
            output_probs=explanation.scores[0, explained],
            inp=inp,
        )

    def _prompt_and_features(
        self, inp: Union[TextTokenInput, TextTemplateInput, ImageMaskInput]
    ) -> "tuple[Dict[str, Tensor], Optional[Tensor]]":
        """The model's prompt, and ``[prompt tokens, features]``: which token belongs to which text feature."""
        if isinstance(inp, ImageMaskInput):
            return {name: value.to(self.device) for name, value in dict(inp.to_model_input()).items()}, None
        if isinstance(inp, TextTokenInput):
            ids = inp.to_model_input().to(self.device)
            tokens = torch.arange(ids.shape[1], device=self.device)
            if inp.itp_mask is not None:
                tokens = tokens[inp.itp_mask[0].to(self.device)]
            features = torch.zeros(ids.shape[1], tokens.numel(), device=self.device)
            features[tokens, torch.arange(tokens.numel(), device=self.device)] = 1.0
            return {"input_ids": ids}, features
        text = inp.to_model_input()
        encoded = self.tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")[0].tolist()
        spans = _value_spans(inp)
        groups = inp.formatted_mask if inp.mask is not None else list(range(len(spans)))
        features = torch.zeros(len(offsets), inp.n_itp_features, device=self.device)
        for token, (start, end) in enumerate(offsets):
            for value, characters in enumerate(spans):
                if end > start and any(start <= c < end for c in characters):
                    features[token, groups[value]] = 1.0
        return {name: tensor.to(self.device) for name, tensor in encoded.items() if name != "token_type_ids"}, features


def segment_relevance(grid: Tensor, inp: ImageMaskInput) -> Tensor:
    """``[tokens, segments]``: patch-grid relevance ``[tokens, h, w]`` spread evenly over the image's pixels
    (each patch's share divided among the pixels it covers), summed over each segment's pixels; a tiled image's
    ``[tokens, tiles, h, w]`` only with one tile (where several tiles lie in the image is the processor's)."""
    if grid.dim() == 5 or (grid.dim() == 4 and grid.shape[1] != 1):
        raise ValueError(f"An ImageMaskInput is one image read on one tile: the prompt's image relevance is "
                         f"{tuple(grid.shape[1:-2])} images or tiles (a tile's place in the image is the processor's). Make "
                         "the processor give one image of one tile, or read explain(...).image for several.")
    if grid.dim() == 4:
        grid = grid[:, 0]
    if grid.dim() != 3:
        raise ValueError("An ImageMaskInput needs image relevance on a patch grid: this model's explanation has none.")
    height, width = inp.image.size[1], inp.image.size[0]
    owner = _pixel_cells(grid.shape[1:], (height, width), grid.device)
    share = torch.bincount(owner.flatten(), minlength=grid.shape[1] * grid.shape[2]).to(grid.dtype)  # pixels per cell
    pixels = grid.flatten(1)[:, owner] / share[owner]
    masks = torch.stack([mask.to(grid.device, grid.dtype) for mask in inp.get_mask_list()])
    return torch.einsum("nhw,fhw->nf", pixels, masks)


def _pixel_cells(grid: "torch.Size", size: "tuple[int, int]", device: torch.device) -> Tensor:
    """``[height, width]``: the patch-grid cell (flat index) each pixel falls in, as nearest upsampling places it."""
    index = torch.arange(grid[0] * grid[1], device=device, dtype=torch.float64).reshape(1, 1, *grid)
    return F.interpolate(index, size=size, mode="nearest")[0, 0].long()


def _value_spans(inp: TextTemplateInput) -> List[set]:
    """The character positions each template value occupies in the formatted prompt: those that
    change when that value alone is replaced (by two different fillers, so no character is missed)."""
    values = list(inp.values)

    def formatted(replaced: List[str]) -> str:
        return inp.format_fn(**dict(zip(inp.dict_keys, replaced))) if inp.dict_keys else inp.format_fn(*replaced)

    text = formatted(values)
    spans = []
    for index, value in enumerate(values):
        changed: set = set()
        for filler in ("\x00", "\x01"):
            other = formatted(values[:index] + [filler * len(value)] + values[index + 1 :])
            if len(other) != len(text):
                raise ValueError(f"The template's output length depends on value {index} ({value!r}) beyond its own length.")
            changed |= {c for c, (a, b) in enumerate(zip(text, other)) if a != b}
        spans.append(changed)
    return spans
