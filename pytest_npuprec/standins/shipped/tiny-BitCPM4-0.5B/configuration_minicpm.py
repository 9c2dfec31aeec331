"""MiniCPM configuration for the ``tiny-BitCPM4-0.5B`` stand-in (remote code, ``trust_remote_code=True``).

Written for this project from MiniCPM's published architecture; the keys and their meaning
follow the openbmb checkpoints' ``config.json`` (``scale_emb``, ``scale_depth``,
``dim_model_base``, ``rope_scaling`` of type ``longrope``), which is also what vLLM's native
MiniCPM reads.  Plain ``__init__`` (no dataclass fields), the form remote-code configs use.
"""

from transformers import PretrainedConfig


class MiniCPMConfig(PretrainedConfig):
    model_type = "minicpm"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=None,
        hidden_act="silu",
        max_position_embeddings=2048,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        rope_theta=10000.0,
        rope_scaling=None,
        scale_emb=1.0,
        dim_model_base=1,
        scale_depth=1.0,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.rope_theta = rope_theta
        # transformers 5 keeps this under `rope_parameters` (rope_scaling is an alias property there)
        self.rope_scaling = dict(rope_scaling) if rope_scaling else None
        # muP-style scalings: token embeddings x scale_emb, each residual branch x
        # scale_depth / sqrt(num_hidden_layers), final hidden / (hidden_size / dim_model_base)
        self.scale_emb = scale_emb
        self.dim_model_base = dim_model_base
        self.scale_depth = scale_depth
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
