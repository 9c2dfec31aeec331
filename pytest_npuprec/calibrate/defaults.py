"""The `precision:` section a config without one gets, so an existing vllm-ascend config is onboarded as it is."""
from __future__ import annotations

from typing import Any

MAX_TOKENS = 32
TEXT_PROMPTS = (
    "The capital of France is",
    "Water boils at",
    "Explain the theory of relativity in simple terms.",
    "Write a short poem about autumn.",
    "Who wrote the novel '1984'?",
)
CHAT_PROMPT = {"id": "chat-capital", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def default_precision(tokenizer: Any) -> dict[str, Any]:
    """max_tokens, positions and prompts; a chat prompt too when the tokenizer has a chat template."""
    prompts: list[Any] = list(TEXT_PROMPTS)
    if getattr(tokenizer, "chat_template", None):
        prompts.append(CHAT_PROMPT)
    return {"max_tokens": MAX_TOKENS, "positions": "continuation", "prompts": prompts}
