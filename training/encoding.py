"""Turning contract prompts and responses into token ids (prompt and response encoded separately, so
the prompt/response boundary — and hence the SFT mask — is exact).

Two formats:
- plain (default): ``render_plain(prompt)`` then " " + response, then EOS;
- chat: the tokenizer's chat template; the response ids are what the template adds after the
  generation prompt for the assistant turn (its own end-of-turn marker included).
"""
from __future__ import annotations

from training.data import Prompt, prompt_messages, render_plain


class PromptTooLong(ValueError):
    """The prompt does not fit the context and truncation is "error"."""


def encode_prompt(tokenizer, prompt: Prompt, *, chat_template: bool = False) -> list[int]:
    if chat_template:
        text = tokenizer.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=False)
    else:
        text = render_plain(prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_response(tokenizer, prompt: Prompt, response: str, *, chat_template: bool = False) -> list[int]:
    if not chat_template:
        return tokenizer(" " + response.strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    messages = prompt_messages(prompt)
    head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise ValueError("the chat template does not extend the generation prompt with the assistant turn")
    # The turn ends at its end-of-turn token: the whitespace a template puts after it (ChatML's "\n") only
    # separates it from a next turn, and generation, which stops at that token, never writes it. So a
    # response is the same tokens here as in a rollout, and a reward model reads both alike.
    return tokenizer(full[len(head):].rstrip(), add_special_tokens=False)["input_ids"]


def fit_prompt(prompt_ids: list[int], budget: int, truncation: str, what: str = "prompt") -> list[int]:
    """Keep the last ``budget`` tokens (truncation "left"), or raise ``PromptTooLong`` ("error")."""
    if len(prompt_ids) <= budget:
        return prompt_ids
    if truncation == "error":
        raise PromptTooLong(f"{what} has {len(prompt_ids)} tokens but only {budget} fit the context; "
                            f"shorten it or set truncation='left' to drop its beginning")
    return prompt_ids[len(prompt_ids) - budget:] if budget > 0 else []


def encode_pair(tokenizer, prompt: Prompt, response: str, *, max_length: int, truncation: str = "left",
                chat_template: bool = False) -> tuple[list[int], int]:
    """(ids of prompt + response, number of prompt tokens) within ``max_length``: ``encode_group`` with
    one response."""
    seqs, n_prompt = encode_group(tokenizer, prompt, [response], max_length=max_length, truncation=truncation,
                                  chat_template=chat_template)
    return seqs[0], n_prompt


def encode_group(tokenizer, prompt: Prompt, responses: list[str], *, max_length: int, truncation: str = "left",
                 chat_template: bool = False) -> tuple[list[list[int]], int]:
    """(ids of prompt + each response, number of prompt tokens) within ``max_length``.

    A response keeps its start and is cut on the right only when it alone leaves less than half the
    context to the prompt; the prompt then gets the rest, losing its beginning (or raising). The prompt
    is cut once, for the longest response, so that every response of a ranking sees the same prompt
    tokens (and the reward model compares like with like)."""
    prompt_ids = encode_prompt(tokenizer, prompt, chat_template=chat_template)
    keep_prompt = min(len(prompt_ids), max_length // 2)
    responses_ids = [encode_response(tokenizer, prompt, r, chat_template=chat_template)[:max_length - keep_prompt]
                     for r in responses]
    prompt_ids = fit_prompt(prompt_ids, max_length - max(map(len, responses_ids)), truncation)
    return [prompt_ids + ids for ids in responses_ids], len(prompt_ids)
