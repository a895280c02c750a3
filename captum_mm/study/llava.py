"""The main job's study of ``llava-easyvqa``, a generative VLM: its generated answers explained and
perturbation-tested like the VQA models' predicted classes.

Each sample's answer is what the model generates (greedy); every method explains its word pieces
(``explain(prompt, generate=True)``), their relevance summed over the answer's pieces. The perturbation
tests drop image tokens or question tokens **from the LM's sequence** in order of that relevance (a
dropped image token takes its projected vision feature with it; the vision tower still sees the whole
image; ``[CLS]`` stays) and score whether the answer then generated is still the correct one. Image
relevance lies on the 8 x 8 patch grid, the same cells as the shapes' ground-truth coverage, so the
VQA study's plausibility measures apply as they are. The gallery shows every generated piece on its own.
"""

import textwrap
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from captum_mm.attr import Explanation
from captum_mm.datasets.easy_vqa import GRID, EasyVQA
from captum_mm.metrics.perturbation import DEFAULT_STEPS, TokenGroup
from captum_mm.metrics.study import Setting, StudyResult, run_perturbation_study
from captum_mm.study.notes import vanished_panels
from captum_mm.study.options import Options
from captum_mm.study.faithfulness import NO_INFIDELITY_GENERATED, refused_methods
from captum_mm.study.vqa import Plausibility, faithfulness_summary, study_tables
from captum_mm.visualization import ExplanationView, plot_perturbation_curves, save_perturbation_study, view
from captum_mm.visualization.figures import relevance_gallery
from captum_mm.zoo.model_recipe import Recipe
from captum_mm.zoo.train_llava import IMAGE_TOKEN, IMAGE_TOKENS, decoded, pixel_values, tokenizer

#: The LM sequence's question tokens and image tokens, as the perturbation tests drop them.
QUESTION = TokenGroup(("question_ids",), "question_mask")
IMAGE = TokenGroup(("image_positions",), "image_mask")
#: Generated answers explained and perturbed: a quarter of the VQA models' questions (each perturbed forward generates).
SAMPLE_SHARE = 4


class GeneratedAnswer:
    r"""
    The model's greedy answer (up to 3 word pieces) to the LM sequence ``[CLS]``, the kept image tokens, the kept
    question tokens (left-padded), as one-hot scores over easy-VQA's answers and a last column for anything else.

    Args:
        model (torch.nn.Module): The ``LlavaForConditionalGeneration``.
        answers (list of str): easy-VQA's answers, in label order.
    """

    def __init__(self, model: nn.Module, answers: List[str]) -> None:
        self.model, self.answers, self.words = model, answers, tokenizer()

    def __call__(self, question_ids: Tensor, question_mask: Tensor, image_positions: Tensor, image_mask: Tensor,
                 pixel_values: Tensor) -> Tensor:
        model = cast(Any, self.model)
        embed = model.get_input_embeddings()
        output = model.get_image_features(pixel_values=pixel_values)  # every patch of the whole image, projected
        features = output.pooler_output if hasattr(output, "pooler_output") else output
        features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features  # [B, 64, D]
        start = embed(torch.tensor([self.words.cls_token_id], device=question_ids.device))
        rows = []
        for b in range(question_ids.shape[0]):
            image = features[b, image_positions[b][image_mask[b].bool()]]
            question = embed(question_ids[b][question_mask[b].bool()])
            rows.append(torch.cat([start, image, question]))
        length = max(len(row) for row in rows)
        embeds = features.new_zeros(len(rows), length, features.shape[-1])
        mask = torch.zeros(len(rows), length, dtype=torch.long, device=features.device)
        for b, row in enumerate(rows):
            embeds[b, length - len(row):], mask[b, length - len(row):] = row, 1
        output = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=3, do_sample=False)
        scores = torch.zeros(len(rows), len(self.answers) + 1)
        for b, ids in enumerate(output.tolist()):
            answer = decoded(self.words, ids)
            scores[b, self.answers.index(answer) if answer in self.answers else len(self.answers)] = 1.0
        return scores


def _collate(dataset: EasyVQA) -> Callable[[List[int]], Tuple[Dict[str, Tensor], Tensor]]:
    """Question ``indices`` as the perturbation tests' keyword arguments (right-padded question tokens, the image
    token positions, pixels) and their one-hot answers (with the "anything else" column)."""
    words = tokenizer()

    def collate(indices: List[int]) -> Tuple[Dict[str, Tensor], Tensor]:
        questions = [words.encode(dataset.questions[i], add_special_tokens=False) for i in indices]
        ids = torch.zeros(len(indices), max(map(len, questions)), dtype=torch.long)
        for row, tokens in enumerate(questions):
            ids[row, : len(tokens)] = torch.tensor(tokens)
        images = torch.stack([pixel_values(dataset.image(i)[None])[0] for i in indices])
        labels = torch.tensor([dataset.labels[i] for i in indices])
        batch = {"question_ids": ids, "question_mask": (ids != 0).long(), "pixel_values": images,
                 "image_positions": torch.arange(IMAGE_TOKENS).expand(len(indices), -1).clone(),
                 "image_mask": torch.ones(len(indices), IMAGE_TOKENS, dtype=torch.long)}
        return batch, nn.functional.one_hot(labels, len(dataset.answers) + 1).float()

    return collate


def prompt_of(batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
    r"""
    The model's left-padded prompts ``[CLS] [IMG] x 64 question`` of a batch of :func:`_collate`.

    Args:
        batch (dict): Right-padded ``question_ids`` and ``pixel_values``.

    Returns:
        *dict*: ``input_ids``, ``attention_mask`` and ``pixel_values``.
    """
    words = tokenizer()
    rows = [[words.cls_token_id] + [words.convert_tokens_to_ids(IMAGE_TOKEN)] * IMAGE_TOKENS + ids[ids != 0].tolist()
            for ids in batch["question_ids"]]
    length = max(map(len, rows))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, length - len(tokens):] = torch.tensor(tokens)
    return {"input_ids": ids, "attention_mask": (ids != 0).long(), "pixel_values": batch["pixel_values"]}


def explain_answers(factory: Callable[..., Any], model: nn.Module, batch: Dict[str, Tensor]) -> Explanation:
    r"""
    The generated answers (up to 3 greedy word pieces) to the questions of a :func:`_collate` batch, explained by the
    method ``factory``.

    Args:
        factory (Callable): The method: ``factory(model)`` is its explainer.
        model (torch.nn.Module): The ``LlavaForConditionalGeneration``.
        batch (dict): A batch of :func:`_collate`.

    Returns:
        *Explanation*: From ``explain(prompt_of(batch), generate=True)``.
    """
    return factory(model).explain(prompt_of(batch), generate=True, generation_args={"max_new_tokens": 3, "do_sample": False})


def piece_relevance(factory: Callable[..., Any], model: nn.Module, batch: Dict[str, Tensor],
                    explanation: Optional[Explanation] = None) -> Tuple[Tensor, Tensor, Tensor]:
    r"""
    Each generated word piece of each question of a :func:`_collate` batch, explained by the method ``factory``.

    Args:
        factory (Callable): The method: ``factory(model)`` is its explainer.
        model (torch.nn.Module): The ``LlavaForConditionalGeneration``.
        batch (dict): A batch of :func:`_collate`.
        explanation (Explanation, optional): The batch's :func:`explain_answers` by ``factory``, if already computed.
                    Default: None

    Returns:
        *tuple*: The relevance over the question tokens ``[B, K, T]`` and the image patches ``[B, K, 64]``, and the
        pieces' ids ``[B, K]`` (-1 for the end token and after it).
    """
    explanation = explanation if explanation is not None else explain_answers(factory, model, batch)
    generated = cast(Tensor, explanation.generated_ids)  # explanations of generated tokens have them
    ids = generated.masked_fill(generated == tokenizer().sep_token_id, -1)
    prompt_length = explanation.text.shape[-1]
    question = explanation.text.new_zeros(*ids.shape, batch["question_ids"].shape[1])
    for row, length in enumerate(batch["question_mask"].sum(1).tolist()):
        question[row, :, :length] = explanation.text[row, :, prompt_length - length:]
    return question, explanation.image.flatten(2), ids


def answer_relevance(factory: Callable[..., Any], model: nn.Module) -> Callable[..., Dict[str, Tensor]]:
    r"""
    A method's relevance for the perturbation tests: the generated answer of each question explained, summed over
    its word pieces (the end token left out).

    Args:
        factory (Callable): The method: ``factory(model)`` is its explainer.
        model (torch.nn.Module): The ``LlavaForConditionalGeneration``.

    Returns:
        *Callable*: ``relevance(batch, targets)`` giving ``text`` (question tokens ``[B, T]``) and ``image``
        (patches ``[B, 64]``).
    """

    def relevance(batch: Dict[str, Tensor], targets: Tensor) -> Dict[str, Tensor]:
        question, image, ids = piece_relevance(factory, model, batch)
        pieces = (ids >= 0).to(question.dtype)[..., None]
        return {"text": (question * pieces).sum(1), "image": (image * pieces).sum(1)}

    return relevance


def llava_study(recipe: "Recipe", options: "Options", methods: Dict[str, Callable]) -> Dict[str, Any]:
    r"""
    Perturbation tests on the generated answers, plausibility and the gallery of ``llava-easyvqa`` on easy-VQA test.

    Args:
        recipe (Recipe): The model's recipe.
        options (Options): The main job's options (the VLM's checkpoint, ``samples`` of which a quarter are
                    explained, gallery size, seed, output folder).
        methods (dict): Method name to explainer factory; each explains the generated answers.

    Returns:
        *dict*: The perturbation result as ``numbers``, the VQA study's tables, the curves and the gallery, and the
        gallery's questions as interactive views (``views``).
    """
    name = recipe.name
    model = recipe.load(options.checkpoints.get(name))
    dataset = EasyVQA("test")
    settings = [Setting("image", IMAGE, DEFAULT_STEPS, False), Setting("image", IMAGE, DEFAULT_STEPS, True),
                Setting("text", QUESTION, DEFAULT_STEPS, False), Setting("text", QUESTION, DEFAULT_STEPS, True)]
    plausibility = Plausibility(dataset)
    methods, refused = refused_methods(methods, model)
    relevance_methods = {method: answer_relevance(factory, model) for method, factory in methods.items()}
    result = cast(StudyResult, run_perturbation_study(
        GeneratedAnswer(model, dataset.answers), list(range(len(dataset))), _collate(dataset), relevance_methods, settings,
        num_samples=max(1, options.samples // SAMPLE_SHARE), seed=options.seed, progress=options.progress,
        on_relevance=plausibility,
    ))
    folder = Path(options.output) / name
    save_perturbation_study(result, folder, f"{name}: perturbation tests on the generated answers to {len(result.samples)} "
                            "easy-VQA test questions")
    gallery, views, note = _gallery(model, dataset, methods, result.samples[: options.gallery])
    gallery.savefig(folder / "gallery.png", dpi=110, bbox_inches="tight")
    tables = study_tables(name, result, plausibility, refused)
    return {"numbers": result.to_dict(), "tables": tables, "notes": {"gallery": note},
            "summary": [*faithfulness_summary(tables), NO_INFIDELITY_GENERATED],
            "figures": {"curves": plot_perturbation_curves(result), "gallery": gallery}, "views": {"interactive gallery": views}}


def _gallery(model: nn.Module, dataset: EasyVQA, methods: Dict[str, Callable],
             indices: List[int]) -> Tuple[Figure, List[ExplanationView], str]:
    """One column per generated word piece of each question: its relevance over the question and the image, per method;
    each question's answer in an interactive view (every method); the note on the black panels."""
    batch, _ = _collate(dataset)(indices)
    words = tokenizer()
    explanations = {method: explain_answers(factory, model, batch) for method, factory in methods.items()}
    explained = {method: piece_relevance(methods[method], model, batch, explanation)
                 for method, explanation in explanations.items()}
    prompt_ids = prompt_of(batch)["input_ids"]
    views = [_answer_view(explanations, row, prompt_ids[row], dataset.image(index)) for row, index in enumerate(indices)]
    columns = [(row, piece) for row, ids in enumerate(next(iter(explained.values()))[2].tolist())
               for piece, token in enumerate(ids) if token >= 0]
    question_tokens = [words.convert_ids_to_tokens(row[row != 0].tolist()) for row in batch["question_ids"]]
    relevance = {method: (torch.stack([question[row, piece] for row, piece in columns]),
                          torch.stack([image[row, piece] for row, piece in columns]))
                 for method, (question, image, _) in explained.items()}
    ids = next(iter(explained.values()))[2]
    titles = [f"{textwrap.fill(dataset.questions[indices[row]], 24)}\n→ {decoded(words, [t for t in ids[row].tolist() if t >= 0])}"
              f" (piece {words.convert_ids_to_tokens(int(ids[row, piece]))})" for row, piece in columns]
    figure = relevance_gallery([dataset.image(indices[row]) for row, _ in columns], [question_tokens[row] for row, _ in columns],
                               relevance, (GRID, GRID), titles)
    return figure, views, vanished_panels(relevance)


def _answer_view(explanations: Dict[str, Explanation], row: int, prompt_ids: Tensor, image: Any) -> ExplanationView:
    """One question's generated answer, every piece (the end token included) by every method."""
    words, first = tokenizer(), next(iter(explanations.values()))
    pieces = [str(words.convert_ids_to_tokens(token)) for token in cast(Tensor, first.generated_ids)[row].tolist() if token >= 0]
    return view(explanations, sample=row, tokens=words.convert_ids_to_tokens(prompt_ids.tolist()), generated=pieces,
                images=[image])
