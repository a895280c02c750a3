import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2VisionConfig, LlamaConfig
from captum_mm.attr import GenericAttention

vision = Blip2VisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                           patch_size=8)
qformer = Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                             encoder_hidden_size=32, cross_attention_frequency=1)
text = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
model = Blip2ForConditionalGeneration(Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
                                                  text_config=text.to_dict(), num_query_tokens=16, image_token_index=3)).eval()
ids = torch.tensor([[3] * 16 + [1, 5, 6, 7]])  # one image token per query token
prompt = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32)}
explanation = GenericAttention(model).explain(prompt, continuation=[[8, 9]])
print(explanation.text.shape, explanation.image.shape)  # [1, 2, 4] over the text, [1, 2, 4, 4] on the patch grid
