"""AttnLRP on Whisper, BLIP and BLIP-2: relevance read at ``input_features`` (time steps onto the encoder's frames,
by hand) and at ``pixel_values``; CP-LRP conserves each explained logit in float64 once nothing absorbs relevance."""

from typing import Optional

import pytest
import torch
from torch import nn

from captum_mm.adapters.whisper import frames_to_time
from captum_mm.attr import AttnLRP
from captum_mm.attr._inputs import read_inputs
from captum_mm.relevance.schedule import Readout, Schedule
from helpers import BLIP_START, blip2, blip_questions, blip_vqa, vlm_prompts, whisper, whisper_features

CONTINUATION = torch.tensor([[5, 6, 7], [8, 9, 10]])


def test_time_steps_are_read_on_their_frames_by_hand():
    """Two frames over four time steps of two mel bins: ``audio`` sums the mel bins of each step, frame ``j`` the
    steps ``2j`` and ``2j + 1`` (as the second convolution's stride 2 partitions time)."""
    rows = torch.tensor([0])
    outputs = {"frames": Readout("target", rows, "source"),
               "audio": Readout("target", rows, "source", grid=(1, 4), spread=frames_to_time(2))}
    schedule = Schedule({"source": 2, "target": 1}, {"source": torch.ones(1, 2, dtype=torch.bool)}, [], outputs, rows)
    features = torch.tensor([[[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]]])
    read = read_inputs(schedule, {"input_features": features}, {"input_features": "audio"})
    assert torch.equal(read["audio"], torch.tensor([[[11.0, 22.0, 33.0, 44.0]]]))
    assert torch.equal(read["frames"], torch.tensor([[33.0, 77.0]]))
    overlapping = torch.tensor([[0.5, 0.5, 0.5, 0.0], [0.0, 0.0, 0.5, 0.5]])  # step 2 in both frames
    schedule.outputs["audio"] = Readout("target", rows, "source", grid=(1, 4), spread=overlapping)
    with pytest.raises(TypeError, match="each time step is one token's"):
        read_inputs(schedule, {"input_features": features}, {"input_features": "audio"})


def _zeroed(model: nn.Module, absorbing: tuple, start: Optional[nn.Module] = None, start_id: int = 0) -> nn.Module:
    """Biases and the ``absorbing`` parameters (position embeddings, constant tokens) zeroed, and a decoder's start
    token embedded as zeros by its embeddings ``start`` (its relevance is no output): only the inputs hold relevance."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or any(part in name for part in absorbing):
                parameter.zero_()
        if start is not None:
            start.weight[start_id] = 0
    return model


def _decoded(start: int) -> torch.Tensor:
    return torch.cat([torch.full((2, 1), start), CONTINUATION], 1)


def _assert_conserved(explanation, logits: torch.Tensor) -> None:
    total = sum(value.flatten(2).sum(-1) for name, value in explanation.outputs().items() if name != "frames")  # = audio
    assert all(value.abs().sum() > 0 for value in explanation.outputs().values())
    assert torch.allclose(total, logits, rtol=1e-6, atol=0)


def _whisper():
    torch.manual_seed(0)
    model = whisper(layers=2).double()
    start = model.config.decoder_start_token_id
    return _zeroed(model, ("embed_positions",), model.get_decoder().get_input_embeddings(), start), start


def test_cp_lrp_conserves_whispers_logit_through_the_convolutional_stem():
    """The stem's GELUs (functions, not modules) take the identity rule; the audio's relevance over time steps sums
    to its frames'."""
    model, start = _whisper()
    features = whisper_features(2)["input_features"].double()
    explanation = AttnLRP(model, constant_attention=True).explain({"input_features": features}, continuation=CONTINUATION)
    logits = model(input_features=features, decoder_input_ids=_decoded(start)).logits[:, :-1]
    _assert_conserved(explanation, logits.gather(-1, CONTINUATION[..., None])[..., 0])
    steps = explanation.audio[:, :, 0]
    torch.testing.assert_close(explanation.frames, steps[..., 0::2] + steps[..., 1::2], rtol=1e-12, atol=1e-15)


def test_cp_lrp_conserves_blips_logit():
    """BLIP question answering: the question at the text encoder's embeddings, the answer at the decoder's, the image
    at its pixels; the vision tower's class and position embeddings and the texts' position embeddings zeroed."""
    torch.manual_seed(0)
    model = blip_vqa().double()
    _zeroed(model, ("position_embedding", "class_embedding"), model.text_decoder.get_input_embeddings(), BLIP_START)
    batch = blip_questions(batch=2, pad=False)
    batch["pixel_values"] = batch["pixel_values"].double()
    explanation = AttnLRP(model, constant_attention=True).explain(batch, continuation=CONTINUATION)
    with torch.no_grad():
        image = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        question = model.text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      encoder_hidden_states=image).last_hidden_state
        logits = model.text_decoder(input_ids=_decoded(BLIP_START), encoder_hidden_states=question,
                                    encoder_attention_mask=batch["attention_mask"]).logits[:, :-1]
    _assert_conserved(explanation, logits.gather(-1, CONTINUATION[..., None])[..., 0])


@pytest.mark.parametrize("language", ["llama", "opt", "t5"])
def test_cp_lrp_conserves_blip2s_logit(language):
    """The image read at its pixels through the Q-Former (its learned query tokens zeroed: they hold relevance as
    constants), the prompt at the LM's embeddings (BLIP-2 embeds it itself, also for Flan-T5's encoder)."""
    torch.manual_seed(0)
    model = blip2(language=language, vision_init=0.2).double()
    with torch.no_grad():
        for matrix in (p for p in model.language_model.parameters() if p.dim() == 2):
            matrix.mul_(2.0)  # logits well above the identity rule's 1e-9 stabiliser
    start = getattr(model.config.text_config, "decoder_start_token_id", None)
    decoder = model.language_model.get_decoder().get_input_embeddings() if language == "t5" else None
    _zeroed(model, ("position_embedding", "class_embedding", "query_tokens", "embed_positions"), decoder, start or 0)
    batch = vlm_prompts(batch=2)
    batch["pixel_values"] = batch["pixel_values"].double()
    explanation = AttnLRP(model, constant_attention=True).explain(batch, continuation=CONTINUATION)
    if language == "t5":
        logits = model(**batch, decoder_input_ids=_decoded(start)).logits[:, :-1]
    else:
        ids, mask = torch.cat([batch["input_ids"], CONTINUATION], 1), torch.cat([batch["attention_mask"], torch.ones_like(CONTINUATION)], 1)
        logits = model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"]).logits[:, -4:-1]
    _assert_conserved(explanation, logits.detach().gather(-1, CONTINUATION[..., None])[..., 0])
