"""Text encoder backends: prompts -> cached text contexts (`gemma` + LTX-2 connectors, `t5`)."""

from __future__ import annotations

from .base import TextBackend, get_text_backend, text_backend_names

__all__ = ["TextBackend", "get_text_backend", "text_backend_names"]
