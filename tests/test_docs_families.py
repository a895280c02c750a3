"""The documentation site's generated parts: every family page's example runs and explains a model of its family,
every adapter has a page, and the API reference's docstring conversion (Sphinx roles, ``Examples::``)."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

# the documentation tools come with the [docs] extra (.ci/run installs it beside [test])
griffe = pytest.importorskip("griffe")
pytest.importorskip("mkdocs")

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(DOCS))  # hooks.py imports families.py beside it, as mkdocs loads it
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(DOCS))
    return module


hooks, families, roles = _load("hooks"), _load("families"), _load("griffe_roles")
PAGES = hooks.family_pages((DOCS / "METHOD.md").read_text())


def test_every_adapter_has_a_family_page_and_every_page_its_adapters():
    assert families.uncovered() == []
    assert sorted(families.FAMILY_ADAPTERS) == sorted(slug for slug, _, _ in PAGES)
    served = families.adapters()
    assert all(adapter in served for names in families.FAMILY_ADAPTERS.values() for adapter in names)
    assert "LlamaForCausalLM" in families.classes("decoder-only-lms") and "GPT2LMHeadModel" in families.classes("decoder-only-lms")


@pytest.mark.parametrize("slug,title,paragraph", PAGES, ids=[slug for slug, _, _ in PAGES])
def test_family_example_runs_on_a_model_of_its_family(slug, title, paragraph):
    schedule, code = families.split_example(slug, paragraph)
    assert "```python" not in schedule
    namespace, _ = families.run_example(code)
    assert type(namespace["model"]).__name__ in families.classes(slug)
    table = families.returns_table(namespace["explanation"])  # every output it returns has its meaning
    assert "| `target` |" in table and "| `scores` |" in table


def test_family_page_lists_classes_outputs_example_and_schedule():
    slug, title, paragraph = next(page for page in PAGES if page[0] == "decoder-only-lms")
    page = families.family_page(slug, title, paragraph)
    assert page.startswith("# Decoder-only LMs\n\n**Classes**: ") and "`OPTForCausalLM`" in page
    assert "| `text` | `[1, 3, 4]` |" in page and "| `generated` | `[1, 3, 3]` |" in page
    assert "torch.Size([1, 3, 4]) torch.Size([1, 3, 3])" in page  # what the example printed
    assert page.index("## Example") < page.index("## Schedule") < page.index("one $R$")


def test_an_output_without_a_stated_meaning_fails_the_page():
    class Odd:
        target = scores = queries = generated_ids = None

        def outputs(self):
            return {"smell": torch.zeros(1)}

    with pytest.raises(KeyError, match="smell"):
        families.returns_table(Odd())


CODE = '''
class Base:
    def fuse(self):
        """Fuse."""


class Method(Base):
    """Uses :meth:`fuse`, :class:`~pkg.Base`, :attr:`missing` and :class:`torch.Tensor`.

    Returns:
        *Tensor* or *tuple[Tensor, ...]*: the relevance.

    Examples::

        >>> Method()
    """
'''


def test_sphinx_roles_become_cross_references_and_examples_a_section():
    with griffe.temporary_visited_package("pkg", {"__init__.py": CODE}) as package:
        method = package["Method"]
        text = roles.convert(method, method.docstring.value, {})
    assert '<autoref identifier="pkg.Base.fuse" optional><code>fuse</code></autoref>' in text  # inherited member
    assert '<autoref identifier="pkg.Base" optional><code>Base</code></autoref>' in text  # ~ shows the last name
    assert '<autoref identifier="missing" optional><code>missing</code></autoref>' in text  # unresolved: no link, no error
    assert '<autoref identifier="torch.Tensor" optional><code>torch.Tensor</code></autoref>' in text
    assert "\nExamples:\n\n    >>> Method()" in text and "::" not in text
    assert "Returns:\n    Tensor or tuple[Tensor, ...]: the relevance." in text


def test_public_path_replaces_the_defining_module():
    with griffe.temporary_visited_package("pkg", {"__init__.py": "from pkg._impl import Thing\n",
                                                  "_impl.py": 'class Thing:\n    """T."""\n\n\ndef f():\n    """See :class:`Thing`."""\n'}) as package:
        roles.SphinxRoles().on_package(pkg=package)
        assert 'identifier="pkg.Thing"' in package["_impl"]["f"].docstring.value


def test_notebook_stderr_noise_is_dropped_and_other_stderr_kept():
    def stderr(text):
        return ('<div class="jp-OutputArea-child">\n<div class="jp-OutputPrompt jp-OutputArea-prompt"></div>\n<div class="jp-RenderedText '
                f'jp-OutputArea-output" data-mime-type="application/vnd.jupyter.stderr" tabindex="0">\n<pre>{text}</pre>\n</div>\n</div>')

    noise = stderr("/x/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update\n  from .autonotebook import tqdm\n"
                   "Loading weights:   0%|          | 0/169 [00:00&lt;?, ?it/s]\rLoading weights: 100%|##| 169/169\n")
    kept = stderr("UserWarning: captum_mm: the model is in training mode\n")
    page = type("Page", (), {"file": type("File", (), {"src_uri": "t.ipynb"})()})()
    assert hooks.on_post_page(f"a{noise}b{kept}c", page, None) == f"ab{kept}c"


def test_notebook_table_of_contents_takes_the_rendered_headings():
    from mkdocs.structure.toc import get_toc

    toc = get_toc([{"level": 1, "id": "title", "name": "Title", "children": [
        {"level": 2, "id": "generate-then", "name": ": generate, then", "children": []}]}])
    page = type("Page", (), {"toc": toc, "file": type("File", (), {"src_uri": "t.ipynb"})()})()
    html = ('<h1 id="title">Title<a class="anchor-link" href="#title">¶</a></h1><h2 id="explain-generate-then"><code>explain'
            '</code>: generate, then<a class="anchor-link" href="#explain-generate-then">¶</a></h2>')
    hooks.on_page_content(html, page, None, None)
    entry = list(toc)[0].children[0]
    assert (entry.id, entry.title, entry.url) == ("explain-generate-then", "<code>explain</code>: generate, then", "#explain-generate-then")
