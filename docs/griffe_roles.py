"""A griffe extension for the API reference (``mkdocs.yml``: mkdocstrings' ``extensions``), at render time.

The docstrings follow Captum's style, written for Sphinx: roles such as ``:class:`Explanation``` and
``:meth:`~captum_mm.models.ArchitectureAdapter.events``` and literal ``Examples::`` blocks. Before mkdocstrings
parses a docstring this rewrites

* each role as a cross-reference to the API page of the object it names (resolved in the docstring's own scope,
  as Sphinx does; autorefs' ``optional`` form: a name outside the API reference, e.g. ``torch.Tensor`` or a
  private helper, renders as code without a link and without a warning);
* ``Examples::`` (``Example::``) as the Google-style ``Examples:`` section, whose ``>>>`` lines render as code;
* a ``Returns:`` type without Captum's emphasis (``*Tensor*``), as mkdocstrings shows it as code.
"""

import html
import re
from typing import Any, Dict, Iterator

import griffe

ROLE = re.compile(r":(?:py:)?(?:attr|meth|mod|class|func|data|obj|exc|const):`(?P<name>[^`]+)`")
#: The first line of a ``Returns:`` section: its type (Captum writes ``*Tensor*``) before the colon.
RETURNS = re.compile(r"^(?P<head>[ \t]*Returns:\n[ \t]+)(?P<type>[^:\n]+):", re.MULTILINE)
EXAMPLES = re.compile(r"^(?P<indent>[ \t]*)(?P<title>Examples?)::[ \t]*$", re.MULTILINE)


def identifier(obj: griffe.Object, name: str, public: Dict[str, str]) -> str:
    """The full path of ``name`` as written in ``obj``'s docstring: its first part resolved in ``obj``'s scope
    (members, inherited members, the module's imports, the parents'), the rest appended, and where that object is
    re-exported by a public package (``captum_mm.attr._readout.Explanation``), the public path the API reference
    renders (``captum_mm.attr.Explanation``); ``name`` itself where nothing resolves it."""
    head, _, rest = name.partition(".")
    try:
        resolved = inherited(obj, head) or obj.resolve(head)
    except (griffe.NameResolutionError, griffe.AliasResolutionError, griffe.CyclicAliasError, AttributeError, KeyError):
        return name
    full = f"{resolved}.{rest}" if rest else resolved
    for canonical, shown in public.items():
        if full == canonical or full.startswith(canonical + "."):
            return shown + full[len(canonical):]
    return full


def inherited(obj: griffe.Object, name: str) -> str:
    """The path of ``name`` as a member its class (``obj`` or ``obj``'s parent) inherits, where it is documented;
    empty if it is no such member."""
    cls = obj if obj.is_class else obj.parent
    if cls is None or not cls.is_class or name in cls.members:
        return ""
    member = cls.all_members.get(name)
    return "" if member is None else (member.target_path if member.is_alias else member.path)


def cross_reference(obj: griffe.Object, role_target: str, public: Dict[str, str]) -> str:
    """A Sphinx role's target as an optional autorefs cross-reference whose title is the name in code."""
    name = role_target.strip().rstrip("()")
    shown = name.lstrip("~")
    if name.startswith("~"):
        shown = shown.rsplit(".", 1)[-1]
    target = html.escape(identifier(obj, name.lstrip("~"), public), quote=True)
    return f'<autoref identifier="{target}" optional><code>{html.escape(shown)}</code></autoref>'


def convert(obj: griffe.Object, text: str, public: Dict[str, str]) -> str:
    """``text`` with its roles as cross-references, its ``Examples::`` blocks as ``Examples:`` sections and its
    return type plain."""
    text = EXAMPLES.sub(lambda m: f"{m['indent']}{m['title']}:", text)
    text = RETURNS.sub(lambda m: f"{m['head']}{m['type'].replace('*', '')}:", text)
    return ROLE.sub(lambda m: cross_reference(obj, m["name"], public), text)


def walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """``obj`` and every member below it; aliases are yielded, not entered."""
    yield obj
    if not obj.is_alias:
        for member in obj.members.values():
            yield from walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring once the package is loaded (so that names defined anywhere resolve)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        objects = list(walk(pkg))
        public: Dict[str, str] = {}
        for alias in (o for o in objects if o.is_alias and "._" not in o.path):
            if len(alias.path) < len(public.get(alias.target_path, alias.target_path)):
                public[alias.target_path] = alias.path
        for obj in objects:
            if not obj.is_alias and obj.docstring is not None:
                obj.docstring.value = convert(obj, obj.docstring.value, public)
