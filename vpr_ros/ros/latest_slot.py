"""A one-item mailbox between the executor and a worker thread that keeps only the newest item."""

import threading
import time
from typing import Any, Optional


class LatestSlot:
    """Holds at most one item; :meth:`put` overwrites an item the worker has not taken yet."""

    def __init__(self) -> None:
        """Create an empty, open slot."""
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False

    def put(self, item: Any) -> bool:
        """Store ``item``; return True when it replaced (dropped) an item not yet taken."""
        with self._cond:
            dropped = self._full
            self._item, self._full = item, True
            self._cond.notify()
            return dropped

    def take(self, timeout_s: float) -> Optional[Any]:
        """Return and remove the item, waiting up to ``timeout_s``; None on timeout or close."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._full and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    break
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def close(self) -> None:
        """Wake a waiting :meth:`take`; from now on :meth:`take` never waits."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed
