"""The byte layout of the workload maps' keys and values, as bpf/flowtrace.c reads them."""

import pytest

from exporter.ipman import (
    IpmanError, Registration, ip_key, key_ip, parse_ports, port_prefixes, ports_keys, ports_value,
    value_workload, workload_value,
)


def test_ipv4_keys_are_v4_mapped_like_the_tracepoints_give_them():
    assert ip_key("10.231.0.1") == bytes(10) + b"\xff\xff" + bytes([10, 231, 0, 1])
    assert key_ip(ip_key("10.231.0.1")) == "10.231.0.1"
    assert key_ip(ip_key("FD00:231::0:1")) == "fd00:231::1"


def test_a_port_range_decomposes_into_aligned_prefixes_that_cover_exactly_it():
    for lo, hi in ((20000, 20999), (1, 65535), (8443, 8443), (1024, 2047), (65535, 65535), (3, 17)):
        blocks = port_prefixes((lo, hi))
        covered = []
        for first, bits in blocks:
            size = 1 << (16 - bits)
            assert first % size == 0  # aligned: a prefix of the 16-bit port
            covered.extend(range(first, first + size))
        assert covered == list(range(lo, hi + 1))
    assert port_prefixes((1024, 2047)) == [(1024, 6)]
    assert port_prefixes((8443, 8443)) == [(8443, 16)]
    assert len(port_prefixes((20000, 20999))) == 6


def test_port_range_keys_are_prefixes_over_the_address_and_port_in_network_order():
    (key,) = ports_keys("10.0.3.8", (1024, 2047))
    assert key == (32 + 6).to_bytes(4, "little") + bytes([10, 0, 3, 8]) + (1024).to_bytes(2, "big") + b"\0\0"
    assert ports_value("shop/cart", (20000, 20999))[64:] == (20000).to_bytes(2, "little") + (20999).to_bytes(2, "little")
    with pytest.raises(IpmanError, match="IPv4"):
        ports_keys("fd00::1", (1, 2))


def test_ports_are_parsed_as_one_port_or_a_range():
    assert parse_ports("8443") == (8443, 8443)
    assert parse_ports("20000-20999") == (20000, 20999)
    for bad in ("0", "2-1", "65536", "x", "1-"):
        with pytest.raises(IpmanError, match="ports"):
            parse_ports(bad)


def test_workload_values_are_nul_padded_and_bounded():
    assert value_workload(workload_value("shop/checkout")) == "shop/checkout"
    assert len(workload_value("x")) == 64
    for bad in ("", "x" * 64, "a\0b"):
        with pytest.raises(IpmanError):
            workload_value(bad)


def test_bad_addresses_and_ports_are_refused():
    with pytest.raises(IpmanError, match="not an IP"):
        ip_key("10.0.0.300")



def test_registrations_print_their_ports():
    assert Registration("10.0.0.1", (443, 443), "w").where() == "10.0.0.1:443"
    assert Registration("10.0.0.1", (20000, 20999), "w").where() == "10.0.0.1:20000-20999"
    assert Registration("10.0.0.1", None, "w").where() == "10.0.0.1"
