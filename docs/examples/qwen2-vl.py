import torch
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from captum_mm.attr import GenericAttention

vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
              in_channels=3, mlp_ratio=2)
text = dict(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=3,
                                                      vision_start_token_id=38, vision_end_token_id=39)).eval()
ids = torch.tensor([[1] + [3] * 16 + [5, 6, 7]])  # an 8 x 8 patch grid merged 2 x 2: 16 image tokens
prompt = {"input_ids": ids, "pixel_values": torch.randn(64, 3 * 2 * 4 * 4), "image_grid_thw": torch.tensor([[1, 8, 8]]),
          "mm_token_type_ids": (ids == 3).long()}
explanation = GenericAttention(model).explain(prompt, continuation=[[8, 9]])
print(explanation.image.shape)  # [1, 2, 8, 8]: each continuation token on the patch grid
