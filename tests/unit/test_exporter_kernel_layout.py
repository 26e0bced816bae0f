"""The socket -> network namespace offsets, read from a BTF blob laid out as the kernel writes it."""

import struct

import pytest

from exporter.kernel_layout import LayoutError, netns_offsets

INT, PTR, STRUCT, TYPEDEF = 1, 2, 4, 8


def btf(types: list[tuple]) -> bytes:
    """types: (kind, name, size_or_type, members[(name, type_id, bit_offset)], kind_flag)."""
    strings = b"\0"
    offsets = {"": 0}

    def string(s: str) -> int:
        nonlocal strings
        if s not in offsets:
            offsets[s] = len(strings)
            strings += s.encode() + b"\0"
        return offsets[s]

    body = b""
    for kind, name, size_or_type, members, kind_flag in types:
        info = (kind_flag << 31) | (kind << 24) | len(members)
        body += struct.pack("<III", string(name), info, size_or_type)
        if kind == INT:
            body += struct.pack("<I", 64)
        for member, type_id, offset in members:
            body += struct.pack("<III", string(member), type_id, offset)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + body + strings


def kernel_like(tmp_path, net_members):
    # ids: 1 int, 2 ptr, 3 anonymous struct {net}, 4 possible_net_t, 5 sock_common, 6 sock, 7 ns_common, 8 net
    blob = btf([
        (INT, "long", 8, [], 0),
        (PTR, "", 8, [], 0),
        (STRUCT, "", 8, [("net", 2, 0)], 0),
        (TYPEDEF, "possible_net_t", 3, [], 0),
        (STRUCT, "sock_common", 136, [("skc_family", 1, 128), ("skc_net", 4, 384)], 0),
        (STRUCT, "sock", 784, [("__sk_common", 5, 0), ("sk_drops", 1, 1088)], 0),
        # kind_flag: member offsets carry a bitfield size in the top byte
        (STRUCT, "ns_common", 80, [("ns_type", 1, 0), ("inum", 1, (0 << 24) | 192)], 1),
        (STRUCT, "net", 4288, net_members, 0),
    ])
    path = tmp_path / "vmlinux"
    path.write_bytes(blob)
    return path


def test_offsets_follow_sock_common_net_and_ns_common(tmp_path):
    offsets = netns_offsets(kernel_like(tmp_path, [("passive", 1, 0), ("ns", 7, 1216)]))
    assert (offsets.sock_net, offsets.net_inum) == (48, 152 + 24)


def test_a_kernel_without_the_field_is_named(tmp_path):
    with pytest.raises(LayoutError, match="net.ns"):
        netns_offsets(kernel_like(tmp_path, [("passive", 1, 0)]))
    (tmp_path / "junk").write_bytes(b"\0" * 64)
    with pytest.raises(LayoutError, match="not BTF"):
        netns_offsets(tmp_path / "junk")
