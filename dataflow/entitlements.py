"""Which addresses each exporter may claim: its host's own addresses and the ranges its platform hands
out there. A claim outside them is never used as ownership, whatever the exporter says. Entries come
from the configuration and from a compacted topic that a trusted platform component writes."""

from __future__ import annotations

import threading
from typing import Iterable, Mapping

import pytricia


class Entitlements:
    """exporter id -> CIDRs it may claim. Shared by a process's workers; updates swap the whole table,
    so readers never see half of one."""

    def __init__(self, required: bool, entries: Mapping[str, Iterable[str]] | None = None):
        self.required = required
        self._lock = threading.Lock()
        self._cidrs: dict[str, tuple[str, ...]] = {}
        self._tries: dict[str, pytricia.PyTricia] = {}
        self.version = 0
        self.rejected = 0  # entries of the exporters topic that were not valid entitlements
        for exporter, cidrs in (entries or {}).items():
            self.set(exporter, cidrs)

    def set(self, exporter: str, cidrs: Iterable[str] | None) -> None:
        """Replace an exporter's entitlement; None or no CIDRs removes it."""
        cidrs = tuple(cidrs or ())
        with self._lock:
            table = dict(self._cidrs)
            tries = dict(self._tries)
            if cidrs:
                table[exporter] = cidrs
                trie = pytricia.PyTricia(128)
                for cidr in cidrs:
                    trie[cidr] = True
                tries[exporter] = trie
            else:
                table.pop(exporter, None)
                tries.pop(exporter, None)
            self._cidrs, self._tries = table, tries
            self.version += 1

    def allows(self, exporter: str, ip: str) -> bool:
        if not self.required:
            return True
        trie = self._tries.get(exporter)
        return trie is not None and ip in trie

    def exporters(self) -> dict[str, tuple[str, ...]]:
        return dict(self._cidrs)
