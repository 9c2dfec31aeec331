"""Non-text prompt inputs: images named in a config (files next to it, or seeded synthetic ones)."""
