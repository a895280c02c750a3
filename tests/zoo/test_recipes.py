"""The recipe registry: one entry per shipped model, and nothing model-specific decided elsewhere."""

import json
import re
from pathlib import Path

import pytest

import captum_mm
from captum_mm import zoo
from captum_mm.study.steps import STEPS
from captum_mm.study.vqa import vqa_study
from captum_mm.zoo.recipes import EASY_VQA, RECIPES, REVIEWS, SHAPE_SCENES, recipe


def test_every_shipped_checkpoint_has_a_recipe_and_every_recipe_a_checkpoint():
    shipped = sorted(path.name for path in zoo.CHECKPOINTS.iterdir() if path.is_dir())
    assert sorted(RECIPES) == shipped == sorted(zoo.NAMES)
    assert zoo.NAMES == ("lxmert-easyvqa", "visualbert-easyvqa", "detr-shapes", "llava-easyvqa", "bert-reviews")  # its order


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_recipe_builds_and_loads_the_class_of_its_checkpoint(name):
    entry = recipe(name)
    config = json.loads((entry.checkpoint() / "config.json").read_text())
    assert config["model_type"] == entry.model_class.config_class.model_type
    built, shipped = entry.build(), zoo.load(name)
    assert type(built) is type(shipped) is entry.model_class and not shipped.training
    assert built.state_dict().keys() == shipped.state_dict().keys()


def test_each_dataset_brings_what_its_study_needs():
    assert list(STEPS) == list(RECIPES)  # every shipped model has its step of the main job, in the same order
    for name, entry in RECIPES.items():
        assert entry.dataset in (EASY_VQA, SHAPE_SCENES, REVIEWS) and entry.epochs > 0 and STEPS[name].evaluations
        assert (entry.easy_vqa is not None) == (STEPS[name].run is vqa_study)  # VQA classifiers' region inputs
    assert type(zoo.load_processor("detr-shapes")).__name__ == "DetrImageProcessorPil"
    with pytest.raises(ValueError, match="lxmert-easyvqa takes no image processor; only detr-shapes do"):
        zoo.load_processor("lxmert-easyvqa")


def test_an_unknown_model_is_refused_with_the_shipped_names():
    with pytest.raises(ValueError, match=r"Unknown model 'blip2-easyvqa'; shipped: lxmert-easyvqa, visualbert-easyvqa, detr-shapes, "
                       r"llava-easyvqa, bert-reviews\."):
        recipe("blip2-easyvqa")
    with pytest.raises(ValueError, match="Unknown model 'blip2-easyvqa'"):
        zoo.load("blip2-easyvqa")


def test_no_code_outside_the_registry_compares_model_names():
    names = "|".join(re.escape(name) for name in RECIPES)
    comparison = re.compile(rf"""[=!]=\s*["']({names})["']|["']({names})["']\s*[=!]=|["']({names})["']\s+(not\s+)?in\s""")
    package = Path(captum_mm.__file__).parent
    found = [
        f"{path.relative_to(package)}: {line.strip()}"
        for path in package.rglob("*.py") if path.name != "recipes.py"
        for line in path.read_text().splitlines() if comparison.search(line)
    ]
    assert found == []
