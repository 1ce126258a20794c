"""Thread-safe node statistics and their /diagnostics (diagnostic_msgs/DiagnosticArray) form.

Counters (received, processed, dropped, rejections by reason), input and processing rates over a
sliding window and per-stage latencies (mean and max of the recent values) are collected from the
executor and worker threads, and published as one ``DiagnosticStatus`` per node.
"""

from collections import Counter, deque
import threading
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

DIAGNOSTICS_TOPIC = '/diagnostics'   # the absolute name every diagnostic aggregator reads
STATUS_PREFIX = 'vpr_ros: '    # status name = prefix + fully qualified node name
RATE_WINDOW_S = 5.0
LATENCY_WINDOW = 100


class _RateMeter:
    """Events per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._times: deque = deque()

    def tick(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()


class NodeStatistics:
    """Counters, rates and latencies of one node, safe to update from several threads."""

    def __init__(self, counters: tuple = ()) -> None:
        """Start with every counter at zero; ``counters`` are reported even while still zero."""
        self._lock = threading.Lock()
        self._counts: Counter = Counter(dict.fromkeys(counters, 0))
        self._rejections: Counter = Counter()
        self._rates = {'input': _RateMeter(RATE_WINDOW_S), 'processed': _RateMeter(RATE_WINDOW_S)}
        self._latencies: dict[str, deque] = {}

    def count(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to counter ``name`` ('received' and 'processed' also feed the rates)."""
        now = time.monotonic()
        with self._lock:
            self._counts[name] += amount
            meter = {'received': 'input', 'processed': 'processed'}.get(name)
            if meter is not None:
                self._rates[meter].tick(now)

    def reject(self, reason: str) -> None:
        """Count one input rejected for ``reason`` (a short snake_case key)."""
        with self._lock:
            self._rejections[reason] += 1

    def record_latencies(self, timings_ms: dict) -> None:
        """Add one value per stage (milliseconds) to the latency windows."""
        with self._lock:
            for stage, value in timings_ms.items():
                self._latencies.setdefault(stage, deque(maxlen=LATENCY_WINDOW)).append(
                    float(value))

    def counter(self, name: str) -> int:
        """Return the value of counter ``name``."""
        with self._lock:
            return self._counts[name]

    def rejections(self) -> dict:
        """Return a copy of the rejection counts by reason."""
        with self._lock:
            return dict(self._rejections)

    def snapshot(self) -> dict:
        """Return every number as a flat ``{key: value}`` dictionary."""
        now = time.monotonic()
        with self._lock:
            values: dict = dict(self._counts)
            values['rejected'] = sum(self._rejections.values())
            values.update({f'rejected.{k}': v for k, v in sorted(self._rejections.items())})
            values.update({f'{k}_rate_hz': round(m.rate(now), 3) for k, m in self._rates.items()})
            for stage, window in sorted(self._latencies.items()):
                values[f'latency_ms.{stage}.mean'] = round(sum(window) / len(window), 3)
                values[f'latency_ms.{stage}.max'] = round(max(window), 3)
        return values


def diagnostic_status(name: str, hardware_id: str, values: dict,
                      warning: Optional[str] = None) -> DiagnosticStatus:
    """Return a status with ``values`` as key/value pairs; ``warning`` sets level WARN."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id)
    status.level = DiagnosticStatus.WARN if warning else DiagnosticStatus.OK
    status.message = warning or 'running'
    status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
    return status


def diagnostic_array(status: DiagnosticStatus, stamp) -> DiagnosticArray:
    """Wrap one status in a ``DiagnosticArray`` stamped ``stamp`` (a builtin_interfaces Time)."""
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array


def status_values(status: DiagnosticStatus) -> dict:
    """Return the key/value pairs of ``status`` as a dictionary of strings."""
    return {kv.key: kv.value for kv in status.values}
