import torch
from transformers import ViTConfig, ViTForImageClassification
from captum_mm.attr import GenericAttention

config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, image_size=32,
                   patch_size=8, num_labels=7)
model = ViTForImageClassification(config).eval()
explanation = GenericAttention(model).explain(torch.randn(1, 3, 32, 32))  # target=None: the predicted class
print(explanation.image.shape)  # [1, 4, 4] on the patch grid
