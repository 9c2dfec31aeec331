"""Chat templates of stand-in models, each with a Python twin that renders training text.

A stand-in is trained on conversations rendered exactly as the chat
template renders them at test time, so a prompt built with
``apply_chat_template(..., add_generation_prompt=True)`` is a prefix the
model has seen, and its trained answer follows.  The jinja template
(shipped in tokenizer_config.json) and the Python renderer must agree;
the unit tests compare them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .tokenizer import CHAT_TEMPLATE, IM_END, IM_START, render_chat

THINK_START = "<think>"
THINK_END = "</think>"

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ChatFormat:
    """A chat template, its Python twin and the single-id tokens it needs besides ChatML's.

    ``render(messages, add_generation_prompt=False, **template_kwargs)``
    must return what the jinja ``template`` renders.
    """

    template: str
    render: Callable[..., str]
    added_tokens: tuple[str, ...] = ()

    def split_example(self, messages: Messages) -> tuple[str, str]:
        """(prompt, completion) of a conversation ending with the assistant's answer.

        The prompt is what ``apply_chat_template(messages[:-1],
        add_generation_prompt=True)`` gives at test time; the two are
        tokenized separately for training so the prompt's tokens are the
        ones a test prompt has.
        """
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("a training conversation ends with the assistant's answer")
        full = self.render(messages)
        prompt = self.render(messages[:-1], add_generation_prompt=True, **self.prompt_kwargs(messages[-1]["content"]))
        if not full.startswith(prompt):
            raise ValueError(f"the generation prompt is not a prefix of the rendered conversation: {prompt!r}")
        return prompt, full[len(prompt) :]

    def prompt_kwargs(self, answer: str) -> dict:
        """Template switches under which ``answer`` is what the model generates."""
        if THINK_END in self.added_tokens and answer.split(THINK_END)[0].split(THINK_START)[-1].strip("\n") == "":
            return {"enable_thinking": False}  # an empty thinking section is the template's, not the model's
        return {}

    def key(self) -> dict:
        return {"template": self.template, "added_tokens": list(self.added_tokens)}


CHATML = ChatFormat(template=CHAT_TEMPLATE, render=render_chat)


# ChatML with a Qwen3-style thinking section.  The last assistant turn of a
# conversation is rendered as "<think>\n{reasoning}\n</think>\n\n{answer}"
# (an empty section when the message has none); earlier assistant turns lose
# their reasoning.  With add_generation_prompt the model writes the section
# itself, unless enable_thinking is false: then the template inserts an
# empty one, as Qwen3 and Nanbeige4 templates do.
THINKING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set content = message['content'] %}"
    "{%- set reasoning = '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning + '\\n</think>\\n\\n' + content + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def render_thinking_chat(messages: Messages, add_generation_prompt: bool = False, enable_thinking: bool = True) -> str:
    """Python twin of THINKING_TEMPLATE."""
    out = []
    for i, m in enumerate(messages):
        content = m["content"]
        if m["role"] != "assistant":
            out.append(f"{IM_START}{m['role']}\n{content}{IM_END}\n")
            continue
        reasoning = ""
        if THINK_END in content:
            reasoning = content.split(THINK_END)[0].split(THINK_START)[-1].strip("\n")
            content = content.split(THINK_END)[-1].lstrip("\n")
        if i == len(messages) - 1:
            out.append(f"{IM_START}assistant\n{THINK_START}\n{reasoning}\n{THINK_END}\n\n{content}{IM_END}\n")
        else:
            out.append(f"{IM_START}assistant\n{content}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
        if not enable_thinking:
            out.append(f"{THINK_START}\n\n{THINK_END}\n\n")
    return "".join(out)


THINKING = ChatFormat(template=THINKING_TEMPLATE, render=render_thinking_chat, added_tokens=(THINK_START, THINK_END))
