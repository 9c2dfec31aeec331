"""Decoded greedy outputs -> what the checks compare: a label, or a thinking section and an answer."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ThinkingState = Literal["closed", "unclosed", "none"]


def extract_label(pattern: str, text: str) -> str | None:
    """The first match of `pattern` in `text`: its groups joined by "/" (the whole match without groups)."""
    match = re.search(pattern, text)
    if match is None:
        return None
    if match.re.groups:
        return "/".join((g or "").strip() for g in match.groups())
    return match.group(0).strip()


@dataclass(frozen=True)
class ThinkingSplit:
    state: ThinkingState  # closed: open...close then an answer; unclosed: ran out inside; none: no section
    thinking: str
    answer: str


def split_thinking(output: str, open_tag: str, close_tag: str, opened_by_prompt: bool = False) -> ThinkingSplit:
    """Split a greedy output into its thinking section and its answer.

    `opened_by_prompt`: the chat template already wrote the open tag at the end of the prompt, so
    the output starts inside the thinking section.
    """
    text = (open_tag if opened_by_prompt else "") + output
    start = text.find(open_tag)
    if start < 0:
        stray_close = text.find(close_tag)
        if stray_close >= 0:  # a close without an open: whatever came before it was thinking
            return ThinkingSplit("closed", text[:stray_close].strip(), text[stray_close + len(close_tag):].strip())
        return ThinkingSplit("none", "", text.strip())
    body = text[start + len(open_tag):]
    end = body.find(close_tag)
    if end < 0:
        return ThinkingSplit("unclosed", body.strip(), "")
    return ThinkingSplit("closed", body[:end].strip(), body[end + len(close_tag):].strip())


def prompt_opens_thinking(prompt_text: str, open_tag: str, close_tag: str) -> bool:
    """Does the rendered prompt end inside a thinking section (open tag after the last close tag)?"""
    return prompt_text.rfind(open_tag) > prompt_text.rfind(close_tag)
