"""TIME arguments of the commands (`--since`, `--from`, `--to`): an ISO 8601 instant, epoch
milliseconds, or a duration back from now (`15m`, `2h30m`, `90s`, `1d`), all read as UTC."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

from dataflow.config import ConfigError

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
HELP = "ISO 8601 (2026-11-28T12:00:00Z), epoch milliseconds, or a duration ago (15m, 2h, 1d)"


def parse_time(text: str, now_ms: int | None = None) -> int:
    """Epoch milliseconds for `text`; a ConfigError saying what is accepted when it is none of them."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    given = text.strip()
    if given == "now":
        return now_ms
    if given.isdigit():
        return int(given)
    duration = given.removeprefix("-")
    if duration and _DURATION.sub("", duration) == "":
        return now_ms - int(sum(float(n) * _UNITS_MS[u] for n, u in _DURATION.findall(duration)))
    try:
        instant = datetime.fromisoformat(given.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"bad time {text!r}: give {HELP}") from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return int(instant.timestamp() * 1000)


def format_ms(ms: int) -> str:
    """An instant as a user reads it back: UTC, to the millisecond."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
