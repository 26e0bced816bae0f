"""Which region owns an address: a CIDR trie of every region's VPC ranges (longest prefix wins)."""

from __future__ import annotations

import ipaddress
from typing import Mapping

import pytricia

from dataflow.config import ConfigError


class RegionMap:
    def __init__(self, regions: Mapping[str, tuple[str, ...]]):
        self._v4 = pytricia.PyTricia(32)
        self._v6 = pytricia.PyTricia(128)
        for region, cidrs in regions.items():
            for cidr in cidrs:
                try:
                    network = ipaddress.ip_network(cidr)
                except ValueError as e:
                    raise ConfigError(f"region {region}: {e}") from None
                trie = self._v6 if network.version == 6 else self._v4
                trie[str(network)] = region

    def region_of(self, ip: str) -> str | None:
        """The region whose CIDRs hold `ip` (canonical text), or None for an external address."""
        return (self._v6 if ":" in ip else self._v4).get(ip)
