import torch
from transformers import LlamaConfig, LlamaForCausalLM
from captum_mm.attr import GenericAttention

config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(config).eval()
prompt = {"input_ids": torch.tensor([[1, 5, 6, 7]])}
explanation = GenericAttention(model).explain(prompt, generate=True, generation_args={"max_new_tokens": 3, "do_sample": False})
print(explanation.generated_ids)  # the 3 generated tokens, each explained
print(explanation.text.shape, explanation.generated.shape)  # [1, 3, 4] over the prompt, [1, 3, 3] over the continuation
