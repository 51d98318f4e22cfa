"""Cooperative cancellation: a token that long work checks at its safe points, and the exception it raises.

A thread cannot be killed from outside in Python, and an asyncio task that is cancelled while it awaits a worker
thread leaves that thread running. So long work (denoising loops, sweeps, and any training loop to come) takes a
`CancelToken` and checks it where stopping is safe and cheap: between denoising steps, between batches, between
settings. Whoever wants the work to end (a Stop button, an API cancel, a client that left, Ctrl-C) calls
`token.cancel(reason)`; the work raises `Cancelled` at its next check and unwinds, releasing what it holds.

The token is a `threading.Event` with a reason: it is set from any thread and read without a lock.

Example:
    >>> token = CancelToken()
    >>> threading.Timer(5.0, token.cancel, args=("took too long",)).start()
    >>> try:
    ...     engine.generate_batch(prompts, seeds, 20, 4.0, spec, cancel=token)
    ... except Cancelled as stop:
    ...     print("stopped:", stop.reason)
"""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """Raised by work whose `CancelToken` was cancelled, at its first check after the cancel.

    Args:
        reason (`str`, defaults to `"cancelled"`): why (the first reason given to `CancelToken.cancel`).
    """

    def __init__(self, reason: str = "cancelled"):
        super().__init__(reason)
        self.reason = reason


class CancelToken:
    """A flag that asks running work to stop at its next check; it cannot be reset.

    One token per job: hand the same token to everything the job runs (engine calls, the sweep runner, a
    training loop), so one `cancel` stops all of it.
    """

    def __init__(self):
        self._event = threading.Event()
        self._reason: str | None = None
        self._lock = threading.Lock()

    def cancel(self, reason: str = "cancelled") -> bool:
        """Ask the work to stop. Thread-safe and idempotent: the first reason is kept.

        Returns:
            `bool`: True if this call cancelled the token, False if it was already cancelled.
        """
        with self._lock:
            if self._event.is_set():
                return False
            self._reason = str(reason)
            self._event.set()
            return True

    @property
    def cancelled(self) -> bool:
        """Whether `cancel` has been called."""
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        """The first reason given to `cancel` (None while not cancelled)."""
        return self._reason

    def raise_if_cancelled(self) -> None:
        """Raise `Cancelled` (with the reason) if the token was cancelled; otherwise do nothing (~100 ns)."""
        if self._event.is_set():
            raise Cancelled(self._reason or "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or `timeout` seconds passed; returns `cancelled` (an interruptible sleep)."""
        return self._event.wait(timeout)


def check(token: CancelToken | None) -> None:
    """`token.raise_if_cancelled()`, for the many places where the token is optional."""
    if token is not None:
        token.raise_if_cancelled()
