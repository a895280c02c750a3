"""One recipe per shipped model: its class, data, inputs and training.

Everything model-specific about a shipped model is its entry in :data:`RECIPES`; the zoo
loader, ``captum-mm train`` and ``captum-mm reproduce`` read it from here. A new model is
one entry (plus the functions it names: its architecture and training) and its study step
(:data:`captum_mm.study.steps.STEPS`).
"""

from typing import Callable, Dict, List

from torch import nn

from captum_mm.datasets.easy_vqa import FEATURES, VISUAL_BERT_FEATURES, for_visual_bert
from captum_mm.metrics import (
    DEFAULT_STEPS,
    LXMERT_IMAGE,
    LXMERT_TEXT,
    VISUAL_BERT_IMAGE,
    VISUAL_BERT_IMAGE_STEPS,
    VISUAL_BERT_TEXT,
)
from captum_mm.zoo import train_bert, train_detr, train_llava, train_vqa
from captum_mm.zoo.model_recipe import CHECKPOINTS, EASY_VQA, REVIEWS, SHAPE_SCENES, EasyVQAInputs, Recipe

__all__ = ["CHECKPOINTS", "EASY_VQA", "RECIPES", "REVIEWS", "SHAPE_SCENES", "EasyVQAInputs", "Recipe", "recipe", "vqa_recipe",
           "with_processors"]


def vqa_recipe(name: str, model_class_name: str, build: Callable[..., nn.Module], epochs: int, inputs: EasyVQAInputs) -> Recipe:
    r"""
    The recipe of a VQA model trained on easy-VQA to the 90 % test-accuracy goal.

    Args:
        name (str): The model's name.
        model_class_name (str): A transformers class.
        build (Callable): The untrained architecture.
        epochs (int): Its training epochs.
        inputs (EasyVQAInputs): How it takes easy-VQA.

    Returns:
        *Recipe*: The recipe.
    """
    return Recipe(
        name=name, model_class_name=model_class_name, dataset=EASY_VQA, build=build, trainer=train_vqa.train_vqa,
        epochs=epochs, goal=("easy_vqa_test_accuracy", 90.0), easy_vqa=inputs,
    )


RECIPES: Dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        vqa_recipe(
            "lxmert-easyvqa", "LxmertForQuestionAnswering", train_vqa.lxmert_model, 3,
            EasyVQAInputs(
                convert=lambda batch: batch, text=LXMERT_TEXT, image=LXMERT_IMAGE, text_steps=DEFAULT_STEPS,
                image_steps=DEFAULT_STEPS, features=FEATURES, answers_field="num_qa_labels",
                features_field="visual_feat_dim",
            ),
        ),
        vqa_recipe(
            "visualbert-easyvqa", "VisualBertForQuestionAnswering", train_vqa.visual_bert_model, 10,
            EasyVQAInputs(
                convert=for_visual_bert, text=VISUAL_BERT_TEXT, image=VISUAL_BERT_IMAGE, text_steps=DEFAULT_STEPS,
                image_steps=VISUAL_BERT_IMAGE_STEPS, features=VISUAL_BERT_FEATURES, answers_field="num_labels",
                features_field="visual_embedding_dim",
            ),
        ),
        Recipe(
            name="detr-shapes",
            model_class_name="DetrForObjectDetection",
            dataset=SHAPE_SCENES,
            build=train_detr.detr_model,
            trainer=train_detr.train_detr,
            epochs=150,
            goal=("bbox_AP50", 0.5),
            processor_class_name="DetrImageProcessorPil",
        ),
        Recipe(
            name="llava-easyvqa",
            model_class_name="LlavaForConditionalGeneration",
            dataset=EASY_VQA,
            build=train_llava.llava_model,
            trainer=train_llava.train_llava,
            epochs=12,
            goal=("easy_vqa_test_exact_match", 90.0),
        ),
        Recipe(
            name="bert-reviews",
            model_class_name="BertForSequenceClassification",
            dataset=REVIEWS,
            build=train_bert.bert_model,
            trainer=train_bert.train_bert,
            epochs=3,
            goal=("reviews_test_accuracy", 95.0),
            mismatches=train_bert.reviews_mismatches,
        ),
    )
}


def recipe(name: str) -> Recipe:
    """The recipe of a shipped model: its class, data, inputs and training.

    Args:
        name (str): One of the shipped models' names.

    Returns:
        *Recipe*: Its entry of :data:`RECIPES`.
    """
    if name not in RECIPES:
        raise ValueError(f"Unknown model {name!r}; shipped: {', '.join(RECIPES)}.")
    return RECIPES[name]


def with_processors() -> List[str]:
    r"""
    The shipped models saved with an image processor.

    Returns:
        *list of str*: Their names.
    """
    return [name for name, entry in RECIPES.items() if entry.processor_class_name is not None]
