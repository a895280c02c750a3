"""The documentation site's family pages (``docs/hooks.py``), each generated from its single sources of truth.

* the schedule: the family's paragraph of ``docs/METHOD.md`` ("Per-architecture schedules");
* the classes: the ``model_classes`` of the adapters that :data:`FAMILY_ADAPTERS` names for the family
  (every registered adapter must be named by one family, so a new adapter cannot miss its page);
* the example: the paragraph's Python block, else ``docs/examples/<slug>.py``; run when the site is built
  (and by ``tests/test_docs_families.py``), so it runs as shown;
* what ``explain`` returns: read from the explanation that example produced (names, shapes), each output's
  meaning from :data:`OUTPUTS`.
"""

import contextlib
import io
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

EXAMPLES = Path(__file__).parent / "examples"
#: The adapters each family page covers, by class name (``captum_mm/adapters/``).
FAMILY_ADAPTERS: Dict[str, Tuple[str, ...]] = {
    "visualbert": ("VisualBertAdapter",), "lxmert": ("LxmertAdapter",), "detr": ("DetrAdapter",),
    "self-attention-only-models": ("ViTAdapter", "BertAdapter", "ClipAdapter"), "vilt": ("ViltAdapter",),
    "swin": ("SwinAdapter",), "decoder-only-lms": ("LlamaAdapter", "GPT2Adapter", "OPTAdapter"),
    "qwen3": ("Qwen3Adapter",), "gemma-2-gemma-3": ("Gemma2Adapter",), "encoder-decoder-lms": ("BartAdapter", "T5Adapter"),
    "llava": ("LlavaAdapter",), "paligemma": ("PaliGemmaAdapter",), "idefics3-smolvlm": ("Idefics3Adapter",),
    "blip-2": ("Blip2Adapter",), "qwen2-vl": ("Qwen2VLAdapter",), "qwen2-5-vl": ("Qwen2_5_VLAdapter",),
    "gemma-3-vision": ("Gemma3VisionLanguageAdapter",), "internvl": ("InternVLAdapter",),
    "qwen3-vl": ("Qwen3VLAdapter", "Qwen3VLMoeAdapter"), "llava-next-llava-onevision": ("LlavaNextAdapter", "LlavaOnevisionAdapter"),
    "blip-question-answering": ("BlipQuestionAnsweringAdapter",), "whisper": ("WhisperAdapter",), "phi-3": ("Phi3Adapter",),
    "mixtral-and-qwen3-moe": ("MixtralAdapter", "Qwen3MoeAdapter"), "llama-3-2-vision": ("MllamaAdapter",),
}
#: What each output of an :class:`~captum_mm.attr.Explanation` holds (``K``: explained elements per sample).
OUTPUTS = {
    "text": "relevance of the text tokens (the prompt's, the question's); `[B, T]`, or `[B, K, T]` per explained element",
    "image": "relevance of the image: over regions `[B, R]`, or on the patch / feature grid `[B, h, w]`; `[B, K, ...]` "
             "per explained element; a VLM's prompts holding several images: `[B, K, images, h, w]`",
    "generated": "relevance of the continuation's tokens for each generated token, `[B, K, C]` (causal: 0 from the token on)",
    "frames": "relevance of the audio encoder's frames, `[B, K, N]`",
    "audio": "the frames' relevance on the time steps of `input_features`, `[B, K, 1, T]`",
    "target": "the explained class of each element: the predicted class, a DETR query's class, a generated token's id",
    "scores": "the predicted probability of `target`",
    "queries": "DETR: the explained query indices (-1 pads)",
    "generated_ids": "generation: the explained tokens' ids (-1 after a sample's end)",
}
CODE = re.compile(r"```python\n(.*?)(?:\n```|\Z)", re.DOTALL)


def split_example(slug: str, paragraph: str) -> Tuple[str, str]:
    """``(paragraph without its Python block, the family's example)``; ``KeyError`` where it has none."""
    found = CODE.search(paragraph)
    if found:
        return (paragraph[:found.start()] + paragraph[found.end():]).strip(), found.group(1).strip()
    path = EXAMPLES / f"{slug}.py"
    if not path.exists():
        raise KeyError(f"family {slug!r} has no example: add a Python block to its METHOD.md paragraph or {path}")
    return paragraph, path.read_text().strip()


def run_example(code: str) -> Tuple[Dict[str, Any], str]:
    """Run an example from a fixed random state (a page shows the same numbers at every build); ``(its names, what
    it printed)``. It must name its model ``model`` and its result ``explanation``."""
    import torch

    namespace: Dict[str, Any] = {"__name__": "__example__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), torch.random.fork_rng():
        torch.manual_seed(0)
        exec(compile(code, "<family example>", "exec"), namespace)
    if "explanation" not in namespace or "model" not in namespace:
        raise KeyError("a family example must name its model `model` and its result `explanation`")
    return namespace, printed.getvalue()


def returns_table(explanation: Any) -> str:
    """The outputs and fields an explanation holds, with their shapes in the example and their meaning."""
    fields = dict(explanation.outputs())
    fields.update({name: getattr(explanation, name) for name in ("target", "scores", "queries", "generated_ids")
                   if getattr(explanation, name) is not None})
    rows = [f"| `{name}` | `{list(value.shape)}` | {OUTPUTS[name]} |" for name, value in fields.items()]
    return ("An [`Explanation`](../api/attr.md#captum_mm.attr.Explanation); for this family its attributes are:\n\n"
            "| attribute | shape in the example | holds |\n|---|---|---|\n" + "\n".join(rows))


def adapters() -> Dict[str, List[str]]:
    """Registered adapters' class names, each with the model classes it serves (sorted)."""
    from captum_mm.models import registry

    served: Dict[str, List[str]] = {}
    for model_class, adapter in registry._ADAPTERS.items():
        served.setdefault(adapter.__name__, []).append(model_class.__name__)
    return {name: sorted(classes) for name, classes in served.items()}


def classes(slug: str) -> List[str]:
    """The model classes of a family page, from its adapters' ``model_classes``."""
    served = adapters()
    return [name for adapter in FAMILY_ADAPTERS[slug] for name in served[adapter]]


def uncovered() -> List[str]:
    """Registered adapters no family page names."""
    named = {adapter for names in FAMILY_ADAPTERS.values() for adapter in names}
    return sorted(set(adapters()) - named)


def family_page(slug: str, title: str, paragraph: str) -> str:
    """The markdown of one family's page."""
    schedule, code = split_example(slug, paragraph)
    names, printed = run_example(code)
    if type(names["model"]).__name__ not in classes(slug):
        raise TypeError(f"the example of {title} explains a {type(names['model']).__name__}, not one of its classes")
    listed = ", ".join(f"`{name}`" for name in classes(slug))
    output = f"It printed:\n\n```text\n{printed.strip()}\n```\n\n" if printed.strip() else ""
    return (f"# {title}\n\n**Classes**: {listed}.\n\n"
            f"## What `explain` returns\n\n{returns_table(names['explanation'])}\n\n"
            "## Example\n\nA tiny random model of the family (no download), run when this site was built:\n\n"
            f"```python\n{code}\n```\n\n{output}"
            f"## Schedule\n\nFrom the specification ([METHOD](../METHOD.md), \"Per-architecture schedules\"):\n\n{schedule}\n")


def overview(pages: List[Tuple[str, str, str]]) -> str:
    """The families' index page: each family with its classes."""
    rows = "\n".join(f"| [{title}]({slug}.md) | {', '.join(f'`{c}`' for c in classes(slug))} |" for slug, title, _ in pages)
    return ("# Supported families\n\nEach family's page gives its classes, what `explain` returns for it, a runnable "
            "example and its schedule. A model of a class not listed here (nor a subclass of one) raises a `TypeError` "
            "naming the closest supported class; tutorial 04 shows how to add an adapter.\n\n| family | classes |\n|---|---|\n" + rows + "\n")
