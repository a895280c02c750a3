"""A griffe extension for the API reference (``mkdocs.yml``: mkdocstrings' ``extensions``), at render time.

The docstrings follow Captum's style, written for Sphinx: roles such as ``:class:`Explanation``` and
``:meth:`~captum_mm.models.ArchitectureAdapter.events``` and literal ``Examples::`` blocks. Before mkdocstrings
parses a docstring this rewrites

* each role as a cross-reference to the API page of the object it names (resolved in the docstring's own scope,
  as Sphinx does; autorefs' ``optional`` form: a name outside the API reference, e.g. ``torch.Tensor`` or a
  private helper, renders as code without a link and without a warning);
* ``Examples::`` (``Example::``) as the Google-style ``Examples:`` section, whose ``>>>`` lines render as code.
"""

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:attr|meth|mod|class|func|data|obj|exc|const):`(?P<name>[^`]+)`")
EXAMPLES = re.compile(r"^(?P<indent>[ \t]*)(?P<title>Examples?)::[ \t]*$", re.MULTILINE)


def identifier(obj: griffe.Object, name: str) -> str:
    """The full path of ``name`` as written in ``obj``'s docstring: its first part resolved in ``obj``'s scope
    (members, the module's imports, the parents'), the rest appended; ``name`` itself where nothing resolves it."""
    head, _, rest = name.partition(".")
    try:
        resolved = inherited(obj, head) or obj.resolve(head)
    except (griffe.NameResolutionError, griffe.AliasResolutionError, griffe.CyclicAliasError, AttributeError, KeyError):
        return name
    return f"{resolved}.{rest}" if rest else resolved


def inherited(obj: griffe.Object, name: str) -> str:
    """The path of ``name`` as a member its class (``obj`` or ``obj``'s parent) inherits, where it is documented;
    empty if it is no such member."""
    cls = obj if obj.is_class else obj.parent
    if cls is None or not cls.is_class or name in cls.members:
        return ""
    member = cls.all_members.get(name)
    return "" if member is None else (member.target_path if member.is_alias else member.path)


def cross_reference(obj: griffe.Object, role_target: str) -> str:
    """A Sphinx role's target as an optional autorefs cross-reference whose title is the name in code."""
    name = role_target.strip().rstrip("()")
    shown = name.lstrip("~")
    if name.startswith("~"):
        shown = shown.rsplit(".", 1)[-1]
    target = html.escape(identifier(obj, name.lstrip("~")), quote=True)
    return f'<autoref identifier="{target}" optional><code>{html.escape(shown)}</code></autoref>'


def convert(obj: griffe.Object, text: str) -> str:
    """``text`` with its roles as cross-references and its ``Examples::`` blocks as ``Examples:`` sections."""
    text = EXAMPLES.sub(lambda m: f"{m['indent']}{m['title']}:", text)
    return ROLE.sub(lambda m: cross_reference(obj, m["name"]), text)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring once the object tree is complete (so that names defined anywhere resolve)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj, obj.docstring.value)
