"""Model adapters: the protocol, the OpenAI-compatible adapter (``tether.models.openai``)."""

from .base import Model, ModelDelta, ModelTurnEnd, ModelUsage, ToolSpec

__all__ = ["Model", "ModelDelta", "ModelTurnEnd", "ModelUsage", "ToolSpec"]
