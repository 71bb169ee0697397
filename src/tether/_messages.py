"""Conversation messages, in the shape OpenAI-compatible chat APIs take."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool"]


class ToolCallFunction(BaseModel):
    """The function a model asked to call, with its arguments as JSON text."""

    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    """One tool call requested by the model."""

    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(BaseModel):
    """One message of a conversation.

    ``interrupted`` marks an assistant message whose generation was cancelled: its content is
    the partial text. ``from_history`` marks a message a run was given from earlier runs (so a
    session's history is not repeated). Both are tether's own flags, never sent to a provider.
    """

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    interrupted: bool = Field(default=False)
    from_history: bool = Field(default=False)

    def to_provider(self) -> dict[str, Any]:
        """This message as an OpenAI chat-completions message dict."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out
