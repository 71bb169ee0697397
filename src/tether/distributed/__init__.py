"""Cross-process cancellation: stop a run from any worker (Redis, push-based, acknowledged).

Needs the ``redis`` extra: ``pip install tether[redis]``.
"""

from ._protocol import RemoteOutcome
from ._redis import RedisCancellation

__all__ = ["RedisCancellation", "RemoteOutcome"]
