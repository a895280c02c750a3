"""Explanations of tiny random-init models for the interactive view's tests (one of each kind), and the colour
rules the page documents, written out independently of its script."""

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

import helpers
from captum_mm.attr import AttentionRollout, TransformerAttribution
from captum_mm.visualization import ExplanationView, view

METHODS = {"TransformerAttribution": TransformerAttribution, "AttentionRollout": AttentionRollout}
CONTINUATION = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
#: user text that would run as markup if it were not escaped
HOSTILE = '</script><img src="x" onerror="window.pwned=1">&amp;'
GENERATED = ["red", HOSTILE, " <!--", "blue"]
#: DETR boxes apart from each other, (cx, cy, w, h) as DETR's pred_boxes
DETR_BOXES = torch.tensor([[0.15, 0.25, 0.2, 0.3], [0.5, 0.25, 0.2, 0.3], [0.85, 0.25, 0.2, 0.3],
                           [0.15, 0.75, 0.2, 0.3], [0.5, 0.75, 0.2, 0.3], [0.85, 0.75, 0.2, 0.3]])


def picture(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)


def generation_case() -> Tuple[Dict[str, object], ExplanationView]:
    """Two methods on a tiny LLaVA explaining four given tokens; prompt tokens labelled one by one."""
    torch.manual_seed(0)
    model = helpers.llava()
    prompt = helpers.vlm_prompts(batch=2)
    runs = {name: method(model).explain(prompt, continuation=CONTINUATION) for name, method in METHODS.items()}
    tokens = ["<s>", HOSTILE] + [f"<image {index}>" for index in range(16)] + ["what", "colour", "is", "it"]
    return runs, view(runs, tokens=tokens, generated=GENERATED, images=[picture(32, 32, 0)])


def several_images_case() -> Tuple[object, ExplanationView]:
    """A tiny LLaVA's batch of two prompts, holding two images and one; the first shown with its two."""
    torch.manual_seed(0)
    ids = torch.tensor([[5] + [helpers.IMAGE_TOKEN] * 16 + [6] + [helpers.IMAGE_TOKEN] * 16 + [7],
                        [0] * 17 + [5] + [helpers.IMAGE_TOKEN] * 16 + [7]])
    prompt = {"input_ids": ids, "attention_mask": (ids != 0).long(), "pixel_values": torch.randn(3, 3, 32, 32)}
    explanation = METHODS["TransformerAttribution"](helpers.llava()).explain(prompt, continuation=[[8, 9], [10]])
    return explanation, view(explanation, images=[picture(32, 32, 3), picture(32, 32, 4)])


def detection_case() -> Tuple[Dict[str, object], ExplanationView]:
    torch.manual_seed(0)
    case = helpers.detr_case()
    runs = {name: method(case.model).explain(case.inputs, threshold=0.0) for name, method in METHODS.items()}
    return runs, view(runs, images=[picture(64, 96, 1)], boxes=DETR_BOXES, labels={0: "cat", 1: "dog", 2: "car"})


def classification_case() -> Tuple[object, ExplanationView]:
    torch.manual_seed(0)
    case = helpers.vilt_case()
    explanation = TransformerAttribution(case.forward, case.model).explain(case.inputs, additional_forward_args=case.additional)
    tokens = ["[CLS]", "what", "shape", "is", "it", "[SEP]"]
    return explanation, view(explanation, names=["ours"], tokens=tokens, images=[picture(32, 32, 2)], labels=["a", "b", "c"])


def token_colour(weight: float) -> Tuple[int, int, int]:
    """White to red for relevance / scale in (0, 1], white to blue for negative."""
    fade = round(255 * (1 - min(1.0, abs(weight))))
    return (255, fade, fade) if weight >= 0 else (fade, fade, 255)


def jet(x: float) -> Tuple[int, int, int]:
    x = min(max(x, 0.0), 1.0)
    channel = lambda centre: round(255 * min(max(1.5 - abs(4 * x - centre), 0.0), 1.0))  # noqa: E731
    return channel(3), channel(2), channel(1)


def expected_token_colours(explanation, token: int) -> Tuple[List[Tuple[int, int, int]], List[Tuple[int, int, int]]]:
    """The prompt's and the earlier generated tokens' colours when generated token ``token`` of sample 0 is shown:
    both on one scale, the largest absolute relevance among them."""
    prompt = explanation.text[0, token].double()
    earlier = explanation.generated[0, token, :token].double()
    scale = max(prompt.abs().max().item(), earlier.abs().max().item() if token else 0.0)
    return ([token_colour(v / scale) for v in prompt.tolist()], [token_colour(v / scale) for v in earlier.tolist()])


def expected_heat(grid: torch.Tensor, scale: Optional[float] = None) -> List[Tuple[int, int, int]]:
    """Jet colours of a map over ``scale`` (default: its own largest absolute value)."""
    values = grid.double().flatten()
    scale = values.abs().max().item() if scale is None else scale
    return [jet(v / scale) for v in values.tolist()]
