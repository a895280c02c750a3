import torch
from transformers import ViltConfig, ViltForQuestionAnswering
from captum_mm.attr import GenericAttention

config = ViltConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    image_size=32, patch_size=8, max_position_embeddings=16, num_labels=7, max_image_length=-1)
model = ViltForQuestionAnswering(config).eval()


def forward(input_ids, pixel_values):
    return model(input_ids=input_ids, pixel_values=pixel_values).logits


explanation = GenericAttention(forward, model=model).explain((torch.tensor([[1, 7, 8, 2]]), torch.randn(1, 3, 32, 32)))
print(explanation.text.shape, explanation.image.shape)  # [1, 4] over the tokens, [1, 4, 4] on the patch grid
