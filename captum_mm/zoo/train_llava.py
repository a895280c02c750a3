"""``llava-easyvqa``: a small ``LlavaForConditionalGeneration`` trained from scratch on easy-VQA to
generate the answer.

A CLIP-style vision tower reads the 64 x 64 image in 8 x 8-pixel patches (an 8 x 8 grid, one
image token per patch), a projector maps its last hidden states into a small LLaMA-style LM,
which reads ``[CLS] [IMG] x 64 question`` and is trained by teacher forcing to continue with the
answer's word pieces and ``[SEP]``. The vocabulary is easy-VQA's reduced bert-base-uncased
WordPiece vocabulary (:data:`GENERATIVE_VOCABULARY`: the questions' pieces, ``yes`` and the image
token), so a ``BertTokenizer`` reads and writes it.
"""

import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import torch
from torch import Tensor, nn

from captum_mm.datasets.easy_vqa import EASY_VQA_VOCABULARY, EasyVQA
from captum_mm.zoo.model_recipe import Recipe
from captum_mm.zoo.training import save_trained, train_epochs

if TYPE_CHECKING:
    from transformers import BertTokenizer, LlavaForConditionalGeneration

IMAGE_TOKEN = "[IMG]"
#: easy-VQA's question word pieces, the answers' (``yes`` is the one the questions lack) and the image token.
GENERATIVE_VOCABULARY = EASY_VQA_VOCABULARY + ("yes", IMAGE_TOKEN)
IMAGE_SIZE, PATCH = 64, 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2
#: Questions of easy-VQA test on which a test checks the shipped checkpoint's recorded accuracy.
CHECK_QUESTIONS = 300


@lru_cache(maxsize=1)
def tokenizer() -> "BertTokenizer":
    """The WordPiece tokenizer of :data:`GENERATIVE_VOCABULARY`: ``encode`` begins a prompt with ``[CLS]`` (no ``[SEP]``,
    which ends the generated answer)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import BertTokenizer

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.txt").write_text("\n".join(GENERATIVE_VOCABULARY) + "\n")
        words = BertTokenizer.from_pretrained(folder, additional_special_tokens=[IMAGE_TOKEN])
    # a prompt begins with [CLS] and has no [SEP]: the model writes that after its answer
    words.backend_tokenizer.post_processor = TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", words.cls_token_id)])
    return words


def llava_model() -> "LlavaForConditionalGeneration":
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    words = tokenizer()
    vision = CLIPVisionConfig(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                              image_size=IMAGE_SIZE, patch_size=PATCH)
    text = LlamaConfig(vocab_size=len(GENERATIVE_VOCABULARY), hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       pad_token_id=words.pad_token_id, bos_token_id=words.cls_token_id, eos_token_id=words.sep_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=GENERATIVE_VOCABULARY.index(IMAGE_TOKEN),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    return LlavaForConditionalGeneration(config)


def pixel_values(images: np.ndarray) -> Tensor:
    """``[B, 64, 64, 3]`` uint8 images as the vision tower takes them, ``[B, 3, 64, 64]`` in [-1, 1]."""
    return torch.tensor(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def prompt_ids(question: str) -> List[int]:
    """``[CLS] [IMG] x 64`` and the question's word pieces."""
    words = tokenizer()
    image = words.convert_tokens_to_ids(IMAGE_TOKEN)
    return [words.cls_token_id] + [image] * IMAGE_TOKENS + words.encode(question, add_special_tokens=False)


def answer_ids(answer: str) -> List[int]:
    """The answer's word pieces and ``[SEP]``."""
    words = tokenizer()
    return words.encode(answer, add_special_tokens=False) + [words.sep_token_id]


def prompts(dataset: EasyVQA, indices: Sequence[int]) -> Dict[str, Tensor]:
    """Left-padded prompts (as generation pads) of questions ``indices`` with their images."""
    rows = [prompt_ids(dataset.questions[i]) for i in indices]
    length = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(rows):
        ids[row, length - len(tokens):] = torch.tensor(tokens)
        mask[row, length - len(tokens):] = 1
    images = np.stack([dataset.image(i) for i in indices])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values(images)}


def _training_batch(dataset: EasyVQA, indices: Sequence[int]) -> Tuple[Dict[str, Tensor], Tensor]:
    """Prompt + answer, right after each other, left-padded; labels on the answer tokens only (-100 elsewhere)."""
    rows = [(prompt_ids(dataset.questions[i]), answer_ids(dataset.answers[dataset.labels[i]])) for i in indices]
    length = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(rows):
        start = length - len(prompt) - len(answer)
        ids[row, start:] = torch.tensor(prompt + answer)
        labels[row, length - len(answer):] = torch.tensor(answer)
        mask[row, start:] = 1
    images = np.stack([dataset.image(i) for i in indices])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixel_values(images)}, labels


def generated_answers(model: nn.Module, dataset: EasyVQA, indices: Sequence[int], batch_size: int = 128) -> List[str]:
    """What ``model`` generates (greedy, up to 3 word pieces) for questions ``indices``, decoded."""
    words, answers = tokenizer(), []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = prompts(dataset, indices[start : start + batch_size])
            output = cast(Any, model).generate(**batch, max_new_tokens=3, do_sample=False)[:, batch["input_ids"].shape[1]:]
            answers += [decoded(words, row) for row in output.tolist()]
    return answers


def decoded(words: "BertTokenizer", ids: List[int]) -> str:
    """Generated ids as text, special tokens (the end token) left out."""
    return cast(str, words.decode(ids, skip_special_tokens=True)).strip()


def exact_match(model: nn.Module, dataset: EasyVQA, indices: Optional[Sequence[int]] = None) -> float:
    """Exact-match accuracy (%) of the generated answers on ``dataset`` (all of it, or ``indices``)."""
    chosen = list(range(len(dataset))) if indices is None else list(indices)
    generated = generated_answers(model, dataset, chosen)
    return 100.0 * sum(answer == dataset.answers[dataset.labels[i]] for answer, i in zip(generated, chosen)) / len(chosen)


def train_llava(recipe: "Recipe", output: Path, seed: int = 0, epochs: Optional[int] = None, batch_size: int = 64,
                lr: float = 1e-3, limit: Optional[int] = None) -> Dict[str, Any]:
    """Train ``llava-easyvqa`` on easy-VQA train by teacher forcing, save it to ``output`` (with its tokenizer's
    vocabulary) and return its measured quality. ``limit`` uses only the first ``limit`` questions of each split."""
    epochs = epochs or recipe.epochs
    torch.manual_seed(seed)
    started = time.perf_counter()
    train, test = EasyVQA("train"), EasyVQA("test")
    model = recipe.build()

    def step(indices: List[int], epoch: int) -> Tuple[Tensor, str]:
        batch, labels = _training_batch(train, indices)
        logits = model(**batch).logits[:, :-1]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)), ""

    train_epochs(recipe.name, model, step, len(train) if limit is None else min(limit, len(train)), epochs, batch_size, lr, seed)
    test_indices = None if limit is None else range(min(limit, len(test)))
    quality = save_trained(model, output, {
        "easy_vqa_test_exact_match": exact_match(model, test, test_indices),
        "check_subset_exact_match": exact_match(model, test, range(CHECK_QUESTIONS)[:limit]),
    }, started, seed, epochs, limit)
    tokenizer().save_pretrained(output)
    return quality
