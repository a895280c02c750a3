import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
from captum_mm.attr import GenericAttention

vision = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                          patch_size=8)
text = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=3)).eval()
ids = torch.tensor([[1] + [3] * 16 + [5, 6, 7]])  # 16 image tokens: a 32 x 32 image in 8 x 8 patches
prompt = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32)}
explanation = GenericAttention(model).explain(prompt, continuation=[[8, 9]])  # or generate=True on a trained model
print(explanation.text.shape, explanation.image.shape)  # [1, 2, 20] over the prompt, [1, 2, 4, 4] on the patch grid
