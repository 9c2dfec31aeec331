"""Checkpoints on disk: where a model's weights are (locate) and their tensors as numpy arrays (tensors)."""
