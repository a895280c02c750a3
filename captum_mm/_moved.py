"""Module paths of earlier releases, kept importable with a :class:`FutureWarning`: the families moved from
``captum_mm.models.<family>`` to :mod:`captum_mm.adapters`, capture from ``captum_mm.models`` to
:mod:`captum_mm.capture`, ``captum_mm.models.base`` was split by job and the main job moved from
``captum_mm.reproduce`` to :mod:`captum_mm.study`."""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple

_MODELS = "captum_mm.models."
#: Old module path: the modules now holding its names.
MOVED: Dict[str, Tuple[str, ...]] = {
    "captum_mm.models.base": ("captum_mm.models.adapter", "captum_mm.models.targets", "captum_mm.models.specs",
                              "captum_mm.models.structure"),
    "captum_mm.models.target_options": ("captum_mm.models.targets",),
    "captum_mm.models.capture": ("captum_mm.capture.record", "captum_mm.capture.settings"),
    "captum_mm.models.eager": ("captum_mm.capture.eager",),
    "captum_mm.models.lean": ("captum_mm.capture.lean",),
    "captum_mm.models.replay": ("captum_mm.capture.replay",),
    "captum_mm.reproduce": ("captum_mm.study",),
}


def new_homes(name: str) -> Optional[Tuple[str, ...]]:
    """The modules holding the names of the old module path ``name`` (None: ``name`` did not move).

    Args:
        name (str): A module path, e.g. ``"captum_mm.models.llava"``.

    Returns:
        *tuple of str, optional*: The new module paths.
    """
    if name in MOVED:
        return MOVED[name]
    family = name[len(_MODELS):] if name.startswith(_MODELS) else ""
    adapters = Path(__file__).parent / "adapters"
    return (f"captum_mm.adapters.{family}",) if family.isidentifier() and (adapters / f"{family}.py").is_file() else None


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as a module that forwards every name to its new homes, with a warning."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        return importlib.util.spec_from_loader(fullname, self) if new_homes(fullname) else None

    def exec_module(self, module: ModuleType) -> None:
        homes: List[ModuleType] = [importlib.import_module(home) for home in new_homes(module.__name__) or ()]
        warnings.warn(f"{module.__name__} moved to {' and '.join(h.__name__ for h in homes)}: import from there "
                      "(the old path will be removed).", FutureWarning, stacklevel=2)

        def forwarded(attribute: str) -> Any:
            for home in homes:
                if hasattr(home, attribute):
                    return getattr(home, attribute)
            raise AttributeError(f"module {module.__name__!r} has no attribute {attribute!r}")

        module.__dict__["__getattr__"] = forwarded
        module.__dict__["__all__"] = sorted({n for h in homes for n in vars(h) if not n.startswith("_")})


def install() -> None:
    """Make the old module paths importable (once per interpreter), ahead of the other finders: an old path names no
    module of this version, but a stale copy of an earlier one (an older install on the path) must not answer it."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
