import torch
from transformers import BartConfig, BartForConditionalGeneration
from captum_mm.attr import GenericAttention

config = BartConfig(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                    decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
model = BartForConditionalGeneration(config).eval()
prompt = {"input_ids": torch.tensor([[1, 5, 6, 7, 2]])}  # in the encoder
explanation = GenericAttention(model).explain(prompt, continuation=[[8, 9, 10]])  # in the decoder
print(explanation.text.shape, explanation.generated.shape)  # [1, 3, 5] over the prompt, [1, 3, 3] over the continuation
