"""The device faults `--npuprec-fault` can inject (vllm_worker.FAULTS implements them), with their default
magnitudes. Nothing imported: option parsing and `pytest --help` read this in every pytest run."""
from __future__ import annotations

# magnitudes when --npuprec-fault gives none: each clearly outside BF16 noise on tiny-llama; for
# engine_kill / engine_hang the forward passes let through first (0: the first one, in generate)
DEFAULT_MAGNITUDES = {"attention_scale": 1.25, "rope_theta": 0.01, "rmsnorm_offset": 0.1, "overflow": 1,
                      "nondeterminism": 0.01, "engine_kill": 0, "engine_hang": 0,
                      "decode_only": 0.05, "batch_only": 0.05, "graph_only": 0.05, "prefix_only": 0.1,
                      # vision-language (runners/faults/vision.py): tower output factor; normalised-pixel shift;
                      # (unused); (unused)
                      "vision_scale": 1.05, "image_norm": 0.1, "vision_causal": 0, "mrope_collapsed": 0,
                      # MoE (runners/faults/moe.py): the expert probability that underflows to 0 before the
                      # top-k; expert 0's output factor; (unused); tokens per forward pass routed right; the last
                      # tensor-parallel rank's expert partial sum factor (x2: reduced twice, vllm-ascend #6710)
                      "router_lowprec": 0.03, "expert_scale": 1.5, "routing_unnormalized": 0, "router_long": 64,
                      "tp_combine": 2.0,
                      # one decoder layer's block (runners/faults/layers.py): its output factor
                      "layer_scale": 1.25,
                      # audio-language (runners/faults/audio.py): (unused)
                      "audio_mask": 0}
FAULT_NAMES = tuple(DEFAULT_MAGNITUDES)
# faults confined to one decoder layer and block: NAME[=MAGNITUDE][:layer=N][:block=attention|mlp]
LAYER_FAULTS = ("layer_scale",)
FAULT_BLOCKS = ("attention", "mlp", "experts")  # experts: the MLP of a MoE layer
# MoE faults confined to one MoE decoder layer's router (layer=N only; every MoE layer without it)
MOE_LAYER_FAULTS = ("router_lowprec", "expert_scale", "routing_unnormalized", "router_long")
# vision faults confined to one vision block and part: layer=N is the vision block, block=attention|mlp
VISION_BLOCK_FAULTS = ("vision_scale",)
PLACED_FAULTS = LAYER_FAULTS + MOE_LAYER_FAULTS + VISION_BLOCK_FAULTS
