"""Tiny seeded random-weight causal LMs of real architectures, shared by the tests that check truth through each
architecture's own forward (``test_architectures.py``, ``test_continuations.py``)."""

from __future__ import annotations

TEXT = ("The river rises in the northern hills and flows south through farmland, past two market towns, before it "
        "reaches the sea at a wide estuary where herons feed on the mud flats at low tide. In the nineteenth century "
        "the lower reaches were dredged for barges carrying coal, grain and timber to the port.")


def tiny(kind: str, vocab: int, **extra):
    """A seeded 2-layer, hidden-64 random-weight model of a real architecture (large init so logits are far apart)."""
    import torch
    import transformers as tf

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  initializer_range=0.2)
    configs = {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False,
                                                            max_position_embeddings=256)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4,
                                                         n_positions=128, initializer_range=0.2)),
        "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
            **common, num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0, sliding_window=8,
            layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256)),
        "granite": lambda: tf.GraniteForCausalLM(tf.GraniteConfig(
            **common, num_key_value_heads=2, logits_scaling=4.0, embedding_multiplier=3.0, residual_multiplier=0.5,
            attention_multiplier=0.2, max_position_embeddings=256)),
        "cohere": lambda: tf.CohereForCausalLM(tf.CohereConfig(**common, num_key_value_heads=2, logit_scale=0.25,
                                                               max_position_embeddings=256)),
        "bert-decoder": lambda: tf.BertLMHeadModel(tf.BertConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            is_decoder=True, initializer_range=0.2, max_position_embeddings=128)),
    }
    torch.manual_seed(0)
    model = configs[kind]()
    for k, v in extra.items():
        setattr(model.config, k, v)
    return model.eval()
