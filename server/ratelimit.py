"""Per-connection event rate limiting."""

from __future__ import annotations

import time


class TokenBucket:
    """Allow `rate` events per second on average, with bursts of up to `burst` events."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def retry_after(self) -> float:
        """Seconds until one more event is allowed."""
        return max(0.0, (1.0 - self._tokens) / self._rate)
