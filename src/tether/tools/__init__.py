"""Function tools: schema from the signature, execution, and the cancellation policy per tool."""

from ._tool import Tool, tool

__all__ = ["Tool", "tool"]
