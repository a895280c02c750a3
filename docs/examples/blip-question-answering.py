import torch
from transformers import BlipConfig, BlipForQuestionAnswering
from captum_mm.attr import GenericAttention

text = dict(vocab_size=40, hidden_size=32, encoder_hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=12, pad_token_id=0, bos_token_id=1, sep_token_id=2, eos_token_id=3)
vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
              initializer_range=0.2)
model = BlipForQuestionAnswering(BlipConfig(text_config=text, vision_config=vision)).eval()
question = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "pixel_values": torch.randn(1, 3, 32, 32)}
explanation = GenericAttention(model).explain(question, continuation=[[9, 10]])  # the answer's tokens
print(explanation.text.shape, explanation.image.shape)  # [1, 2, 4] over the question, [1, 2, 4, 4] on the patch grid
