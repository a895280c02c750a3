import torch
from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, SiglipVisionConfig
from captum_mm.attr import GenericAttention

vision = SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                            patch_size=8)
text = GemmaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2)
model = PaliGemmaForConditionalGeneration(PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=3,
                                                          projection_dim=32)).eval()
ids = torch.tensor([[3] * 16 + [1, 5, 6, 7]])  # 16 image tokens first, then the text
prompt = {"input_ids": ids, "pixel_values": torch.randn(1, 3, 32, 32), "token_type_ids": torch.zeros_like(ids)}
explanation = GenericAttention(model).explain(prompt, continuation=[[8, 9]])
print(explanation.text.shape, explanation.image.shape)  # [1, 2, 20] over the prompt, [1, 2, 4, 4] on the patch grid
