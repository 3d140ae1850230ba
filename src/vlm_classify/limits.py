"""When a request may go: rate limits that hold in every window, and a service that cannot be
reached at all (used by `runner.py`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from .errors import TransientError

log = logging.getLogger(__name__)


# --- rate limits ---------------------------------------------------------------------------

_LATE_S = 0.005
"""How late a timer may wake without the schedule losing pace (the event loop's granularity)."""
_EPS = 1e-9


class _Meter:
    """One cap: at most `limit` units in any `window`, each unit spaced `window / limit` apart."""

    def __init__(self, limit: float, window: float) -> None:
        self.limit = limit
        self.window = window
        self.interval = window / limit
        self._log: deque[tuple[float, float]] = deque()
        self._sum = 0.0
        self._next = float("-inf")

    def delay(self, cost: float, now: float) -> float:
        """Seconds until `cost` units may go: the spacing, and room in the window."""
        while self._log and self._log[0][0] <= now - self.window:
            self._sum -= self._log.popleft()[1]
        if not self._log:
            self._sum = 0.0
        wait = self._next - now
        excess = self._sum + cost - self.limit
        if excess > _EPS and self._log:  # wait for enough releases to leave the window
            freed = 0.0
            for t, c in self._log:
                freed += c
                if freed >= excess - _EPS or freed >= self._sum - _EPS:
                    wait = max(wait, t + self.window - now)
                    break
        return max(wait, 0.0)

    def take(self, cost: float, now: float) -> None:
        self._log.append((now, cost))
        self._sum += cost
        # Pace from the schedule, not from a late wake-up, so large caps keep their rate.
        self._next = max(self._next, now - _LATE_S) + cost * self.interval


class RateLimiter:
    """At most `rpm` requests and `tpm` tokens in any sliding window of `period` seconds (a
    minute), as the service counts them, for any cap: below 60, fractional, or in the thousands.

    Two rules hold together, for each cap:

    - Spacing: a release of `cost` units holds the next back `cost / cap` of the window, so
      `--rpm 30` sends one request every 2 s from the first, with no start-up burst.
    - A log of the last window's releases: a release waits until the window, itself included,
      holds at most `cap`. This keeps a fractional cap (`--rpm 2.5`: 2 in any minute) and
      requests of unequal token counts within the cap in every window, not only on average.

    The window is `period + slack`: the slack covers the varying time between a release here and
    the request's arrival at the service, so counted by arrival the caps hold in every `period`
    window while that variation stays under the slack. Large caps are not slowed beyond that:
    the pace follows the schedule when a wake-up is late, so the rate is the cap per
    `period + slack`.

    Why not aiolimiter (used before): its leaky bucket starts full, so the first window takes a
    whole bucket at once on top of the steady rate (up to twice the cap), and a bucket of
    `max(rpm / 60, 1)` a second turned any `--rpm` below 60 into 60.

    A request that alone costs more than `tpm` would never fit: it goes alone, once nothing else
    is in the window, and the spacing then holds the next request back until the average is
    under the cap again. Nothing deadlocks; the service may refuse such a request, and that is
    the item's error. Releases are first come, first served.
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        period: float = 60.0,
        slack: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        window = period + slack
        self.requests = _Meter(rpm, window) if rpm else None
        self.tokens = _Meter(tpm, window) if tpm else None
        self._clock = clock
        self._lock = asyncio.Lock()
        self._warned = False

    async def acquire(self, tokens: float = 0) -> None:
        """Wait until one request of `tokens` tokens may be sent, and count it as sent now."""
        meters = [(m, c) for m, c in ((self.requests, 1.0), (self.tokens, tokens)) if m]
        if self.tokens and tokens > self.tokens.limit and not self._warned:
            self._warned = True
            log.warning(
                "a request of %d tokens is over --tpm %g on its own: it is sent alone",
                tokens,
                self.tokens.limit,
            )
        async with self._lock:
            while True:
                now = self._clock()
                wait = max((m.delay(c, now) for m, c in meters), default=0.0)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            for m, c in meters:
                m.take(c, now)


# --- a service that cannot be reached ------------------------------------------------------


class Reachability:
    """Fail fast when the service cannot be reached at all.

    While every attempt of a run has failed to connect (connection refused, unknown host, TLS
    failure: a `TransientError` carrying `unreachable`), those failures are retried for
    `wait_s` at most (or until the item's attempts run out), then the run stops with the
    `UnreachableError`: one line naming the address. Nothing is recorded for the items, so the
    next run asks for them again. Any other outcome of an attempt (an answer, an HTTP error, a
    timeout, a dropped connection) shows the service is there or that the trouble is of another
    kind: from then on, connection failures are ordinary retryable errors.
    """

    def __init__(
        self, wait_s: float, reached: bool = False, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.wait_s = wait_s
        self.reached = reached
        self._clock = clock
        self._since: float | None = None

    @staticmethod
    def _unreachable(exc: BaseException | None) -> Exception | None:
        return exc.unreachable if isinstance(exc, TransientError) else None

    def saw(self, exc: BaseException | None) -> None:
        """Note one attempt's outcome (None: an answer); raise the `UnreachableError` once the
        service has been unreachable for `wait_s`."""
        fatal = self._unreachable(exc)
        if fatal is None:
            self.reached = True
            return
        if self.reached:
            return
        now = self._clock()
        if self._since is None:
            self._since = now
        if now - self._since >= self.wait_s:
            raise fatal from None

    def give_up(self, exc: BaseException) -> None:
        """An item's attempts ran out on `exc`: raise the `UnreachableError` instead of recording
        an error, when the rule applies."""
        fatal = self._unreachable(exc)
        if fatal is not None and not self.reached:
            raise fatal from None

    def cap(self, exc: BaseException | None, wait: float) -> float:
        """The wait before the next try, ending no later than the short wait does."""
        if self._unreachable(exc) is None or self.reached or self._since is None:
            return wait
        return min(wait, max(0.0, self._since + self.wait_s - self._clock()))
