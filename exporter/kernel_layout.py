"""Where, in the running kernel, a socket's network namespace number is: byte offsets read from the
kernel's own BTF (/sys/kernel/btf/vmlinux), never from headers, which do not match our kernels.
The BPF side follows sock -> __sk_common.skc_net -> net.ns.inum with these offsets."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

# BTF kinds (include/uapi/linux/btf.h) and the bytes each adds after the 12-byte common header,
# as (fixed, per vlen entry).
_STRUCT, _TYPEDEF = 4, 8
_EXTRA = {
    1: (4, 0), 2: (0, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 7: (0, 0), 8: (0, 0),
    9: (0, 0), 10: (0, 0), 11: (0, 0), 12: (0, 0), 13: (0, 8), 14: (4, 0), 15: (0, 12), 16: (0, 0),
    17: (4, 0), 18: (0, 0), 19: (0, 12),
}


class LayoutError(Exception):
    """The kernel's BTF lacks a field the BPF side needs; the message names it."""


@dataclass(frozen=True)
class NetnsOffsets:
    sock_net: int  # struct sock: __sk_common.skc_net (a possible_net_t holding struct net *)
    net_inum: int  # struct net: ns.inum


def netns_offsets(path: Path = VMLINUX_BTF) -> NetnsOffsets:
    types = _parse(path.read_bytes())
    skc_net = _member(types, "sock_common", "skc_net")
    possible_net = _member(types, "possible_net_t", "net")  # typedef of an anonymous struct
    ns = _member(types, "net", "ns")
    inum = _member(types, "ns_common", "inum")
    return NetnsOffsets(sock_net=_member(types, "sock", "__sk_common") + skc_net + possible_net,
                        net_inum=ns + inum)


def _parse(data: bytes) -> dict:
    magic, _version, _flags, header_len = struct.unpack_from("<HBBI", data, 0)
    if magic != 0xEB9F:
        raise LayoutError("not BTF (or not little-endian)")
    type_off, type_len, str_off, _str_len = struct.unpack_from("<IIII", data, 8)
    types_at, strings_at = header_len + type_off, header_len + str_off

    def name(offset: int) -> str:
        end = data.index(b"\0", strings_at + offset)
        return data[strings_at + offset:end].decode()

    found = {"by_id": {}, "by_name": {}}
    position, type_id = types_at, 1
    while position < types_at + type_len:
        name_off, info, size_or_type = struct.unpack_from("<III", data, position)
        kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        fixed, per_entry = _EXTRA.get(kind, (None, None))
        if fixed is None:
            raise LayoutError(f"unknown BTF kind {kind}")
        members = {}
        if kind == _STRUCT:
            for i in range(vlen):
                m_name, _m_type, m_offset = struct.unpack_from("<III", data, position + 12 + 12 * i)
                bits = m_offset & 0xFFFFFF if kind_flag else m_offset
                members[name(m_name)] = bits // 8
        entry = (kind, name(name_off), size_or_type, members)
        found["by_id"][type_id] = entry
        if entry[1]:
            found["by_name"].setdefault((kind, entry[1]), entry)
        position += 12 + fixed + per_entry * vlen
        type_id += 1
    return found


def _member(types: dict, struct_name: str, member: str) -> int:
    entry = types["by_name"].get((_STRUCT, struct_name))
    if entry is None:
        typedef = types["by_name"].get((_TYPEDEF, struct_name))
        entry = types["by_id"].get(typedef[2]) if typedef else None
    if entry is None or member not in entry[3]:
        raise LayoutError(f"the kernel's BTF has no {struct_name}.{member}")
    return entry[3][member]
