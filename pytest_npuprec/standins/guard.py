"""A Qwen3Guard-style moderation chat format.

Like Qwen3Guard-Gen's template, the conversation is wrapped in one user
turn that asks for a safety assessment of the last user query, and the
assistant's answer is the verdict: ``Safety: <Safe|Unsafe|Controversial>``
then ``Categories: <comma-separated categories|None>``.  The instruction
is much shorter than Qwen3Guard's (whose policy text alone is a few
hundred tokens) so a guard example fits a 128-token training window.
"""

from __future__ import annotations

import json

from .chat_formats import ChatFormat, Messages
from .tokenizer import IM_END, IM_START

# Qwen3Guard's unsafe-content categories, in its order.
CATEGORIES = (
    "Violent",
    "Non-violent Illegal Acts",
    "Sexual Content or Sexual Acts",
    "PII",
    "Suicide & Self-Harm",
    "Unethical Acts",
    "Politically Sensitive Topics",
    "Copyright Violation",
    "Jailbreak",
)
SAFETY_LEVELS = ("Safe", "Unsafe", "Controversial")

TASK = (
    "# Task: Is THE LAST USER's query safe or unsafe?\n"
    "Unsafe categories: " + ", ".join(CATEGORIES) + ".\n\n"
    "<BEGIN CONVERSATION>\n\n"
)
ANSWER_FORMAT = "<END CONVERSATION>\n\nGive 'Safety: Safe', 'Unsafe' or 'Controversial', then 'Categories:'."


def verdict(safety: str, categories: tuple[str, ...] = ()) -> str:
    """The assistant's answer for a safety level and its categories."""
    if safety not in SAFETY_LEVELS or any(c not in CATEGORIES for c in categories):
        raise ValueError(f"not a guard verdict: {safety!r} {categories!r}")
    return f"Safety: {safety}\nCategories: {', '.join(categories) or 'None'}"


def _literal(text: str) -> str:
    """A jinja string literal (JSON escapes are jinja escapes)."""
    return json.dumps(text, ensure_ascii=True)


GUARD_TEMPLATE = (
    "{%- set verdict = messages|length > 1 and messages[-1]['role'] == 'assistant' %}"
    "{%- set conversation = messages[:-1] if verdict else messages %}"
    "{{- '<|im_start|>user\\n' + " + _literal(TASK) + " }}"
    "{%- for message in conversation %}"
    "{{- message['role']|upper + ': ' + message['content'] + '\\n\\n' }}"
    "{%- endfor %}"
    "{{- " + _literal(ANSWER_FORMAT) + " + '<|im_end|>\\n' }}"
    "{%- if verdict %}"
    "{{- '<|im_start|>assistant\\n' + messages[-1]['content'] + '<|im_end|>\\n' }}"
    "{%- elif add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def render_guard_chat(messages: Messages, add_generation_prompt: bool = False) -> str:
    """Python twin of GUARD_TEMPLATE."""
    has_verdict = len(messages) > 1 and messages[-1]["role"] == "assistant"
    conversation = messages[:-1] if has_verdict else messages
    out = [f"{IM_START}user\n{TASK}"]
    out += [f"{m['role'].upper()}: {m['content']}\n\n" for m in conversation]
    out.append(f"{ANSWER_FORMAT}{IM_END}\n")
    if has_verdict:
        out.append(f"{IM_START}assistant\n{messages[-1]['content']}{IM_END}\n")
    elif add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


GUARD = ChatFormat(template=GUARD_TEMPLATE, render=render_guard_chat)
