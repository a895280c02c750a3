import torch
from transformers import LxmertConfig, LxmertForQuestionAnswering
from captum_mm.attr import GenericAttention

config = LxmertConfig(vocab_size=60, hidden_size=32, num_attention_heads=4, intermediate_size=37, l_layers=2, r_layers=1,
                      x_layers=2, visual_feat_dim=12, visual_pos_dim=4, num_qa_labels=7)
model = LxmertForQuestionAnswering(config).eval()
ids, features, boxes = torch.tensor([[1, 7, 8, 9, 2]]), torch.randn(1, 5, 12), torch.rand(1, 5, 4)  # 5 regions
explanation = GenericAttention(model).explain((ids, features, boxes))  # target=None: the predicted answer
print(explanation.text.shape, explanation.image.shape)  # [1, 5] over the tokens, [1, 5] over the regions
