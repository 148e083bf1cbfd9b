"""Markdown for untrusted text (prompts, model outputs, demonstrations) and for guidelines.

Two layers: raw HTML in the source is never interpreted (python-markdown's HTML handling is removed,
so `<script>` shows as the text `<script>`), and the resulting HTML passes an allow-list sanitizer
(nh3) that drops any attribute or URL scheme not listed — `javascript:` links lose their href.
"""
from __future__ import annotations

import markdown
import nh3
from django.utils.safestring import SafeString, mark_safe

ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "b", "i", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "del",
}
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "code": {"class"}, "th": {"align"}, "td": {"align"}}
URL_SCHEMES = {"http", "https", "mailto"}


def _markdown(hard_breaks: bool) -> markdown.Markdown:
    extensions = ["fenced_code", "tables", "sane_lists"] + (["nl2br"] if hard_breaks else [])
    md = markdown.Markdown(extensions=extensions, output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md


def render_markdown(text: str, *, hard_breaks: bool = True) -> SafeString:
    """Safe HTML for ``text``. Model output keeps its line breaks (``hard_breaks``); documents such as
    guidelines use ordinary markdown paragraphs."""
    html = _markdown(hard_breaks).convert(text or "")
    return mark_safe(nh3.clean(html, tags=ALLOWED_TAGS, attributes=ALLOWED_ATTRIBUTES, url_schemes=URL_SCHEMES,
                               link_rel="noopener noreferrer nofollow"))
