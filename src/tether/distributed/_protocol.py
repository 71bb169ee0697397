"""What the run registry needs from a cross-process canceller: defined by the engine, re-exported here."""

from .._run._remote import Remote, RemoteOutcome

__all__ = ["Remote", "RemoteOutcome"]
