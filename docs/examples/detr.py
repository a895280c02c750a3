import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
from captum_mm.attr import GenericAttention

backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], out_features=["stage4"])
config = DetrConfig(backbone_config=backbone, use_pretrained_backbone=False, use_timm_backbone=False, d_model=16,
                    encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                    encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=6, num_labels=3)
model = DetrForObjectDetection(config).eval()
# target: queries 0 and 4 (by default, those whose best class beats a probability threshold of 0.5)
explanation = GenericAttention(model).explain(torch.randn(1, 3, 64, 96), target=[[0, 4]])
print(explanation.image.shape, explanation.queries)  # [1, 2, 2, 3]: each explained query over the 2 x 3 feature map
