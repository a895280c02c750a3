import torch
from transformers import VisualBertConfig, VisualBertForQuestionAnswering
from captum_mm.attr import GenericAttention

config = VisualBertConfig(vocab_size=60, hidden_size=32, num_attention_heads=4, intermediate_size=37, num_hidden_layers=2,
                          visual_embedding_dim=12, num_labels=7)
model = VisualBertForQuestionAnswering(config).eval()
ids, regions = torch.tensor([[1, 7, 8, 9, 2]]), torch.randn(1, 5, 12)  # a question and 5 region features
mask = torch.ones_like(ids)  # the answer head pools the token before the last real one


def forward(input_ids, visual_embeds, attention_mask):
    return model(input_ids=input_ids, visual_embeds=visual_embeds, attention_mask=attention_mask).logits


explanation = GenericAttention(forward, model=model).explain((ids, regions), additional_forward_args=(mask,))
print(explanation.text.shape, explanation.image.shape)  # [1, 5] over the tokens, [1, 5] over the regions
