import torch
from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig
from captum_mm.attr import GenericAttention

vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=4)
text = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2).to_dict()
model = Idefics3ForConditionalGeneration(Idefics3Config(vision_config=vision, text_config=text, image_token_id=3,
                                                        scale_factor=2)).eval()
ids = torch.tensor([[1] + [3] * 16 + [5, 6, 7]])  # an 8 x 8 patch grid shuffled 2 x 2: 16 image tokens
prompt = {"input_ids": ids, "pixel_values": torch.randn(1, 1, 3, 32, 32)}  # one image per prompt
explanation = GenericAttention(model).explain(prompt, continuation=[[8, 9]])
print(explanation.image.shape)  # [1, 2, 8, 8]: each continuation token on the patch grid
