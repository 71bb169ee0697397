"""The hypothesis settings of the property tests, chosen by ``HYPOTHESIS_PROFILE``.

``ci`` (the default, used by ``make test``) is small and derandomized, so the suite is the same every
time and fits in well under a minute; ``fuzz`` (``make fuzz``) is large (``TETHER_FUZZ_EXAMPLES`` per
test) and random. Both print hypothesis's reproduce blob on failure. Applied per test (``@PROFILE``),
not loaded globally, so the other hypothesis users of the suite (schemathesis) keep their defaults.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

_COMMON = settings(
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
_PROFILES = {
    "ci": settings(_COMMON, max_examples=200, derandomize=True),
    "fuzz": settings(
        _COMMON,
        max_examples=int(os.environ.get("TETHER_FUZZ_EXAMPLES", "2000")),
        derandomize=False,
        phases=[Phase.generate, Phase.target, Phase.shrink, Phase.explain],
    ),
}
PROFILE = _PROFILES[os.environ.get("HYPOTHESIS_PROFILE", "ci")]
