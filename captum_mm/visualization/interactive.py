"""An interactive, self-contained HTML view of explanations: one page (inline script and style, images embedded as
PNG, no server, no network) that works offline, saved to a file or shown in Jupyter."""

import json
import uuid
from importlib import resources
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from torch import Tensor

from captum_mm.attr._readout import Explanation
from captum_mm.visualization._view_data import Labels, view_data

Explanations = Union[Explanation, Sequence[Explanation], Mapping[str, Explanation]]
_ROOT_ID = "__ROOT_ID__"
# in a <script> element, "</script>" or "<!--" inside a string would end or change it: escape what can start them
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


class ExplanationView:
    """One sample of one or several explanations as an interactive HTML page (see :func:`view`).

    Shown in Jupyter by ``_repr_html_``; :meth:`save_html` writes the page, which opens in any browser offline.

    Attributes:
        data (dict): What the page shows, as JSON-able data: ``methods``, ``kind`` (``"generation"``,
                    ``"detection"`` or ``"classification"``), ``strips`` (token outputs and their labels),
                    ``images`` (each heat map's grid and its image as a PNG ``data:`` URI), ``elements`` (each
                    explained element's label, probability and, for DETR, box), ``values`` (per method, per
                    element, the relevance of every token and grid cell) and ``masks`` (DETR: per method, per
                    detection, Algorithm 1's mask as a PNG ``data:`` URI).
    """

    def __init__(self, data: Dict[str, Any]) -> None:
        """
        Args:
            data (dict): What the page shows (the :attr:`data` :func:`view` builds).
        """
        self.data = data

    def html(self, full_page: bool = False) -> str:
        """The view as HTML: one ``<div>`` holding its style, data and script, or a whole page.

        Args:
            full_page (bool, optional): A complete ``<!DOCTYPE html>`` document rather than a fragment.
                        Default: False

        Returns:
            *str*: HTML with no external reference.
        """
        root = f"cmm-view-{uuid.uuid4().hex[:12]}"
        payload = json.dumps(self.data, allow_nan=False)
        for character, escape in _SCRIPT_ESCAPES.items():
            payload = payload.replace(character, escape)
        fragment = (f'<div class="cmm-view" id="{root}"><style>{_asset("viewer.css")}</style>'
                    f'<script type="application/json" class="cmm-data">{payload}</script>'
                    f'<script>{_asset("viewer.js").replace(_ROOT_ID, root)}</script></div>')
        if not full_page:
            return fragment
        return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>captum_mm explanation</title>'
                f"</head><body>{fragment}</body></html>\n")

    def _repr_html_(self) -> str:
        return self.html()

    def save_html(self, path: Union[str, Path]) -> Path:
        """Writes the view as a standalone HTML page.

        Args:
            path (str or Path): Where to write it.

        Returns:
            *Path*: The path written.
        """
        path = Path(path)
        path.write_text(self.html(full_page=True), encoding="utf-8")
        return path


def _asset(name: str) -> str:
    return resources.files("captum_mm.visualization").joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _named(explanations: Explanations, names: Optional[Sequence[str]]) -> Dict[str, Explanation]:
    """Explanations by method name: a mapping's keys, else ``names``, else ``method 1``, ``method 2``, ..."""
    if isinstance(explanations, Explanation):
        explanations = [explanations]
    if isinstance(explanations, Mapping):
        named = {str(name): explanation for name, explanation in explanations.items()}
    else:
        explanations = list(explanations)
        names = list(names) if names is not None else [f"method {index + 1}" for index in range(len(explanations))]
        if len(names) != len(explanations) or len(set(names)) != len(names):
            raise ValueError(f"names must give {len(explanations)} distinct names, one an explanation; got {names}.")
        named = dict(zip(names, explanations))
    if not named or not all(isinstance(value, Explanation) for value in named.values()):
        raise TypeError("view takes an Explanation (from explain), a list of them or a dict {method name: Explanation}.")
    return named


def view(
    explanations: Explanations,
    names: Optional[Sequence[str]] = None,
    *,
    sample: int = 0,
    tokens: Union[Sequence[str], Mapping[str, Sequence[str]], None] = None,
    generated: Optional[Sequence[str]] = None,
    images: Optional[Sequence[Any]] = None,
    labels: Labels = None,
    boxes: Optional[Tensor] = None,
) -> ExplanationView:
    """An interactive view of one sample's explanations, by one or several methods.

    Generated text: click (or hover) a generated token to see its relevance over the prompt's tokens, the
    tokens generated before it and each image (a heat map over the image, with an opacity slider). DETR: click a
    detection, or its box, to see its map and its Algorithm-1 mask. Classifiers: the prediction's text and image
    relevance side by side. Several explanations (of the same inputs and elements) get a method switcher.
    Token colours are relevance over the largest absolute value shown (prompt and generated tokens share one
    scale), red positive, blue negative; heat maps use jet over the largest value of their output's maps (a
    prompt's several images share one scale), negatives shown as 0. Runs of one repeated token that no method
    gives relevance (a VLM's image placeholders) show as one token.

    Args:
        explanations (Explanation, list or dict): What :meth:`~captum_mm.attr.TransformerAttribution.explain`
                    returned, or several of them as a list (named by ``names``) or a dict ``{method name:
                    explanation}``, all of the same batch and elements.
        names (sequence of str, optional): Method names of a list of explanations. Default: None
                    (``method 1``, ``method 2``, ...)
        sample (int, optional): The sample of the batch shown. Default: 0
        tokens (sequence of str or dict, optional): The labels of the ``text`` output's tokens (padding included,
                    e.g. ``tokenizer.convert_ids_to_tokens(input_ids[sample])``), or a dict of labels by output
                    name. Default: None (output name and index)
        generated (sequence of str, optional): The sample's explained generated tokens as text. Default: None
                    (their ids)
        images (sequence, optional): One image per heat map, in the image output's order (a prompt's several
                    images; a prompt holding fewer than its batch's others gives its own only): ``[H, W, 3]`` uint8
                    or float array in [0, 1], ``[3, H, W]`` tensor, or PIL image; a heat map's grid is stretched over
                    its whole image. Default: None (heat maps alone)
        labels (sequence or dict, optional): Class names by class id (e.g. ``model.config.id2label``).
                    Default: None (the ids)
        boxes (Tensor, optional): DETR: the sample's ``outputs.pred_boxes[sample]``, ``[num_queries, 4]``
                    normalised ``(cx, cy, w, h)``; the explained queries' boxes are drawn. Default: None

    Returns:
        *ExplanationView*: Displayed by Jupyter; ``.save_html(path)`` writes it as a page.

    Examples::

        >>> from captum_mm.attr import AttentionRollout, TransformerAttribution
        >>> from captum_mm.visualization import view
        >>> prompt = processor(images=image, text=text, return_tensors="pt")
        >>> runs = {m.__name__: m(model).explain(prompt, generate=True) for m in (TransformerAttribution, AttentionRollout)}
        >>> view(runs, tokens=processor.tokenizer.convert_ids_to_tokens(prompt["input_ids"][0]),
        ...      images=[image]).save_html("explanation.html")
    """
    named = _named(explanations, names)
    data = view_data(list(named.values()), list(named), sample, tokens, generated, list(images or []), labels, boxes)
    return ExplanationView(data)
