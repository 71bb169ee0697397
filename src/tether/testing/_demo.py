"""The model behind the examples and ``tether demo``: a real endpoint if configured, else offline."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..models.openai import OpenAIChat
from ._loopback import LoopbackServer, Reply

_SCENES = [
    "Ember was a young dragon who lived above a quiet mountain village.",
    "One night she found a dusty laptop in a cave and pressed the power button with one careful claw.",
    '"Hello, world," the screen said, and Ember said it back, puffing a small smoke ring.',
    "She learned that a loop repeats a thing until a condition says stop,",
    "much like her grandmother's stories.",
    "Her first program printed her name a thousand times, and the village baker asked her to stop.",
    "She learned to cancel a task she no longer needed, cleanly, without burning anything down.",
    '"A good program knows how to end," said the old owl who ran the village library.',
    "By spring Ember wrote a scheduler for the bakery ovens and never scorched another loaf.",
]


def story_chunks(words: int = 2000) -> list[str]:
    """A long deterministic story about a dragon who learns to code, one word per chunk."""
    text: list[str] = []
    chapter = 0
    while len(text) < words:
        chapter += 1
        text.append(f"\n\nChapter {chapter}.\n\n")
        for scene in _SCENES:
            text.extend(word + " " for word in scene.split())
    return text[:words]


@contextmanager
def demo_model(pace: float = 0.03, script: Sequence[Reply] = ()) -> Iterator[tuple[OpenAIChat, str]]:
    """Yield ``(model, description)``: OpenAI (or ``OPENAI_BASE_URL``) when configured, else offline.

    Offline, a :class:`LoopbackServer` on 127.0.0.1 answers over real HTTP: the ``script`` replies in
    order, then a long story, one word every ``pace`` seconds, so a demo behaves like a real provider.
    """
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        model = OpenAIChat(id=os.environ.get("TETHER_DEMO_MODEL", "gpt-5-mini"))
        yield model, f"model {model.id} at {os.environ.get('OPENAI_BASE_URL') or 'the OpenAI API'}"
        return
    with LoopbackServer(Reply(chunks=story_chunks(), pace=pace)) as server:
        server.push(*script)
        model = OpenAIChat(id="loopback-storyteller", base_url=server.base_url, api_key="offline")
        yield model, f"offline: no OPENAI_API_KEY, using the built-in loopback model at {server.base_url}"
