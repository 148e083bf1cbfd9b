from __future__ import annotations

from django import template

from ..rendering import render_markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str):
    """Render untrusted markdown safely (see annotation/rendering.py)."""
    return render_markdown(text)


@register.filter(name="markdown_doc")
def markdown_doc_filter(text: str):
    """Markdown for documents (guidelines): sanitized, without hard line breaks."""
    return render_markdown(text, hard_breaks=False)
