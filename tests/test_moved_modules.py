"""Module paths of earlier releases still import, with a FutureWarning naming the new home, and give the same
objects; a path that never existed is still an ImportError."""

import importlib
import sys

import pytest

import captum_mm.adapters.llava
import captum_mm.capture.lean
import captum_mm.models.specs
import captum_mm.models.structure
import captum_mm.models.targets


def _import_old(name: str):
    sys.modules.pop(name, None)
    with pytest.warns(FutureWarning, match=f"{name} moved to .*: import from there"):
        return importlib.import_module(name)


def test_a_family_module_keeps_its_old_path():
    old = _import_old("captum_mm.models.llava")
    assert old.LlavaAdapter is captum_mm.adapters.llava.LlavaAdapter


def test_capture_modules_keep_their_old_paths():
    assert _import_old("captum_mm.models.lean").LEAN == captum_mm.capture.lean.LEAN


def test_the_split_base_module_forwards_every_name_to_its_new_home():
    old = _import_old("captum_mm.models.base")
    assert old.attention_specs_in is captum_mm.models.specs.attention_specs_in
    assert old.pre_norm_structure is captum_mm.models.structure.pre_norm_structure
    assert old.TargetSelection is captum_mm.models.targets.TargetSelection
    with pytest.raises(AttributeError, match="captum_mm.models.base.*no_such_name"):
        old.no_such_name


@pytest.mark.parametrize("name", ["captum_mm.models.no_such_family", "captum_mm.no_such_module"])
def test_a_path_that_never_existed_is_still_an_import_error(name):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)
