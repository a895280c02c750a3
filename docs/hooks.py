"""MkDocs hooks of the documentation site (``mkdocs build --strict``, see CONTRIBUTING.md).

* One page per supported family (``docs/families.py``: its classes, what ``explain`` returns, an example run at
  build time, its schedule) and the evaluation protocols, generated from ``docs/METHOD.md`` (the specification
  the code follows) and the adapters, so the site never drifts from them.
* The site works offline: MathJax is copied from the ``django-static-mathjax`` package (the ``[docs]`` extra), the
  notebooks' CDN scripts (MathJax 2, mermaid) are left out, and a page loading anything from another host fails
  the build. The notebooks' kernels talk over IPC sockets in a temporary folder, not unencrypted TCP.
* The notebooks' pages: the libraries' start-up noise on stderr left out (any other stderr kept), the table of
  contents taken from the rendered headings (mkdocs-jupyter's drops their code spans).
* Every public class and function of the API reference must have a docstring, and one taking arguments
  an ``Args:`` (or, for a dataclass, ``Attributes:``) section in Captum's style, one returning a value a
  ``Returns:`` section: the build fails naming those without.
"""

import importlib
import inspect
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import families
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.plugins.captum_mm")
SPEC = Path(__file__).parent / "METHOD.md"
#: The notebooks' CDN scripts that nbconvert's templates add (MathJax 2, mermaid); the site serves its own MathJax.
CDN_SCRIPTS = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->|"
                         r"<script type=\"module\">\s*document\.addEventListener\(\"DOMContentLoaded\", async \(\) => \{"
                         r"\s*const diagrams = document\.querySelectorAll\(\".jp-Mermaid.*?</script>", re.DOTALL)
#: The folder of the notebooks' kernel configuration and IPC sockets, during a build.
KERNELS: Dict[str, str] = {}
#: A notebook's stderr output as nbconvert renders it.
STDERR = re.compile(r'<div class="jp-OutputArea-child">\s*<div class="jp-OutputPrompt jp-OutputArea-prompt"></div>\s*'
                    r'<div class="jp-RenderedText jp-OutputArea-output" data-mime-type="application/vnd.jupyter.stderr"'
                    r'[^>]*>\s*<pre>(?P<text>.*?)</pre>\s*</div>\s*</div>', re.DOTALL)
#: Lines of the libraries' start-up noise on stderr: progress bars (transformers' "Loading weights"), tqdm's
#: missing-ipywidgets warning, an optional torch extension failing to load and torch's deprecation log. Any other
#: stderr line (captum_mm's warnings included) stays on the page.
NOISE = re.compile(r"^\s*$|^Loading weights|TqdmWarning: IProgress not found|^\s*from \.autonotebook import|"
                   r"^Failed to load .*torchao|^W\d{4} [\d:.]+ \d+ torch/")
EXTERNAL = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""")
#: The modules of the API reference (docs/api/*.md); their public names must be documented.
API_MODULES = (
    "captum_mm.attr", "captum_mm.llm", "captum_mm.generation", "captum_mm.models", "captum_mm.capture", "captum_mm.spec",
    "captum_mm.lrp",
    "captum_mm.relevance.schedule", "captum_mm.relevance.propagation", "captum_mm.relevance.rules",
    "captum_mm.relevance.heads", "captum_mm.metrics", "captum_mm.visualization", "captum_mm.datasets", "captum_mm.zoo",
    "captum_mm.study",
)


def _section(text: str, heading: str) -> str:
    """The body of ``## heading`` in ``text``, up to the next ``## ``."""
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[text.index("\n", start) + 1 : end if end >= 0 else len(text)]


def family_pages(text: str) -> List[Tuple[str, str, str]]:
    """``(slug, title, paragraph)`` per family paragraph (``**Name** ...``) of the per-architecture schedules."""
    body = _section(text, "Per-architecture schedules")
    parts = re.split(r"\n(?=\*\*)", "\n" + body.strip())
    pages = []
    for part in (p.strip() for p in parts if p.strip()):
        title = re.match(r"\*\*(.+?)\*\*", part)
        if title is None:
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", title.group(1).lower()).strip("-")
        pages.append((slug, title.group(1), part))
    return pages


def on_files(files: Files, config: Any) -> Files:
    text = SPEC.read_text()
    pages = family_pages(text)
    for slug, title, paragraph in pages:
        files.append(File.generated(config, f"families/{slug}.md", content=families.family_page(slug, title, paragraph)))
    files.append(File.generated(config, "families/index.md", content=families.overview(pages)))
    mathjax = importlib.import_module("mathjax")  # django-static-mathjax: MathJax 3's browser bundles
    bundle = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg.js"
    files.append(File.generated(config, "assets/mathjax/tex-svg.js", abs_src_path=str(bundle)))
    protocols = _section(text, "Evaluation protocols")
    files.append(File.generated(config, "protocols.md", content=f"# Evaluation protocols\n\n{protocols}"))
    return files


def on_config(config: Any) -> Any:
    """The generated family pages in the navigation, and the docstring checks."""
    kernels = KERNELS.setdefault("config", tempfile.mkdtemp(prefix="captum-mm-docs-"))  # nbconvert's configuration: IPC
    Path(kernels, "jupyter_nbconvert_config.json").write_text(
        json.dumps({"KernelManager": {"transport": "ipc", "ip": str(Path(kernels, "kernel"))}}))
    os.environ["JUPYTER_CONFIG_PATH"] = kernels
    pages = [{title: f"families/{slug}.md"} for slug, title, _ in family_pages(SPEC.read_text())]
    for entry in config["nav"]:
        if isinstance(entry, dict) and "Supported families" in entry:
            entry["Supported families"] = ["families/index.md", *pages]
    if families.uncovered():
        log.warning("Adapters no family page names (docs/families.py FAMILY_ADAPTERS): %s", ", ".join(families.uncovered()))
    missing = undocumented()
    if missing:
        log.warning("Public names without a docstring: %s", ", ".join(missing))
    unstyled = without_arguments_section()
    if unstyled:
        log.warning("Public names whose docstring lacks the Args: (Attributes:) or Returns: section Captum's style "
                    "asks for: %s", ", ".join(unstyled))
    return config


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """A notebook's table of contents from its rendered headings: mkdocs-jupyter's drops their code spans, and with
    them part of the anchors it links to (``#generate-then...`` for the heading ``#explain-generate-then...``)."""
    if page.file.src_uri.endswith(".ipynb"):
        headings = re.findall(r'<h\d id="([^"]+)">(.*?)<a class="anchor-link"', html)
        items, stack = [], list(reversed(list(page.toc)))
        while stack:  # the entries in document order
            items.append(stack.pop())
            stack.extend(reversed(list(items[-1].children)))
        if len(items) == len(headings):
            for item, (anchor, title) in zip(items, headings):
                item.id, item.title = anchor, title
        else:
            log.warning("%s: %d headings, %d table of contents entries", page.file.src_uri, len(headings), len(items))
    return html


def on_post_build(config: Any) -> None:
    shutil.rmtree(KERNELS.pop("config", ""), ignore_errors=True)


def on_post_page(output: str, page: Any, config: Any) -> str:
    """The notebooks' pages without nbconvert's CDN scripts; no page loading anything from another host."""
    output = STDERR.sub(_without_noise, CDN_SCRIPTS.sub("", output))
    if EXTERNAL.search(output):
        log.warning("%s loads %s from another host: the site must work offline", page.file.src_uri,
                    EXTERNAL.search(output).group(0))
    return output


def _without_noise(match: "re.Match[str]") -> str:
    """A notebook's stderr output without the libraries' start-up noise; nothing if that is all it holds."""
    lines = re.sub(r"<[^>]+>", "", match["text"]).replace("\r", "\n").splitlines()
    if all(NOISE.search(line) for line in lines):
        return ""
    return match.group(0)


def without_arguments_section() -> List[str]:
    """Public classes and functions of :data:`API_MODULES` taking arguments whose docstrings (the class's or its
    ``__init__``'s) have no ``Args:`` or ``Attributes:`` section, and functions returning a value without a
    ``Returns:`` (or ``Yields:``) section."""
    found: Dict[str, None] = {}
    for name in API_MODULES:
        module = importlib.import_module(name)
        for value in _public(module):
            target = value.__init__ if inspect.isclass(value) else value
            parameters = [] if target is object.__init__ else [p for p in inspect.signature(target).parameters if p != "self"]
            text = (inspect.getdoc(target) or "") + (inspect.getdoc(value) or "")
            returns = inspect.isfunction(value) and inspect.signature(value).return_annotation not in (None, inspect.Signature.empty)
            if (parameters and "Args:" not in text and "Attributes:" not in text) or (
                    returns and "Returns:" not in text and "Yields:" not in text):
                found[f"{value.__module__}.{value.__qualname__}"] = None
    return list(found)


def _public(module: Any) -> List[Any]:
    """The classes and functions a module makes public (its ``__all__``, else its names without ``_``), captum_mm's own."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    values = [getattr(module, name) for name in names]
    return [v for v in values if (inspect.isclass(v) or inspect.isfunction(v)) and v.__module__.startswith("captum_mm")]


def undocumented() -> List[str]:
    """Public classes, functions and methods of :data:`API_MODULES` without a docstring of their own."""
    missing: Dict[str, None] = {}
    for name in API_MODULES:
        for value in _public(importlib.import_module(name)):
            qualified = f"{value.__module__}.{value.__qualname__}"
            if not (value.__doc__ or "").strip():
                missing[qualified] = None
            if inspect.isclass(value):
                for method, member in vars(value).items():
                    if inspect.isfunction(member) and not method.startswith("_") and not _documented_method(value, method):
                        missing[f"{qualified}.{method}"] = None
    return list(missing)


def _documented_method(cls: type, name: str) -> bool:
    """A method documented here or by the method it overrides."""
    return any((getattr(base.__dict__.get(name), "__doc__", None) or "").strip() for base in cls.__mro__ if name in base.__dict__)
