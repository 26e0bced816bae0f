"""The byte layout of the workload maps' keys and values, as bpf/flowtrace.c reads them."""

import pytest

from exporter.ipman import (
    IpmanError, Registration, ip_key, ip_port_key, key_ip, value_workload, workload_value,
)


def test_ipv4_keys_are_v4_mapped_like_the_tracepoints_give_them():
    assert ip_key("10.231.0.1") == bytes(10) + b"\xff\xff" + bytes([10, 231, 0, 1])
    assert key_ip(ip_key("10.231.0.1")) == "10.231.0.1"
    assert key_ip(ip_key("FD00:231::0:1")) == "fd00:231::1"


def test_port_keys_append_the_port_in_host_order():
    key = ip_port_key("10.0.0.1", 8001)
    assert len(key) == 20 and key[16:18] == (8001).to_bytes(2, "little") and key[18:] == b"\0\0"


def test_workload_values_are_nul_padded_and_bounded():
    assert value_workload(workload_value("shop/checkout")) == "shop/checkout"
    assert len(workload_value("x")) == 64
    for bad in ("", "x" * 64, "a\0b"):
        with pytest.raises(IpmanError):
            workload_value(bad)


def test_bad_addresses_and_ports_are_refused():
    with pytest.raises(IpmanError, match="not an IP"):
        ip_key("10.0.0.300")
    with pytest.raises(IpmanError, match="port"):
        ip_port_key("10.0.0.1", 0)


def test_registrations_print_ipv6_ports_in_brackets():
    assert Registration("fd00::1", 443, "w").where() == "[fd00::1]:443"
    assert Registration("10.0.0.1", None, "w").where() == "10.0.0.1"
