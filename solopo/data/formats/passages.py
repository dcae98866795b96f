"""Passages rendered one way for every format, so an item's evidence and the shared pool match exactly
(the context builder recognises an item's own passages in the pool by equality)."""
from __future__ import annotations

import html
from typing import Iterable


def clean(text: str) -> str:
    # The official HotpotQA text keeps HTML entities ("Etiquette &amp; Espionage").
    return html.unescape(text).strip()


def render_passage(title: str, text: str) -> str:
    """"TITLE\\nTEXT", entities decoded and ends stripped; the text alone when there is no title."""
    title, text = clean(title), clean(text)
    return f"{title}\n{text}" if title else text


def dedupe(passages: Iterable[str]) -> tuple[str, ...]:
    """Passages in first-seen order, each once (items of multi-hop sets share many paragraphs)."""
    return tuple(dict.fromkeys(passages))
