"""The pinned workload maps the kernel side reads: local IP -> workload and (local IPv4, port range) ->
workload. Spoken to through the bpf(2) syscall directly, so a container platform (or flowattr-cni) can
fill them whether or not the agent (or BCC) is running."""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# Must match struct ip_key / ports_key / workload / ports_workload in bpf/flowtrace.c.
WORKLOAD_LEN = 64
IP_KEY_SIZE = 16
PORTS_KEY_SIZE = 12  # prefixlen, IPv4, port (network order), 2 bytes never in a prefix
PORTS_VALUE_SIZE = WORKLOAD_LEN + 4  # the workload and the whole range it was registered with
IP_MAP = "ip_workload"
PORTS_MAP = "ip_ports_workload"

_SYS_BPF = 321  # x86_64
_MAP_CREATE, _MAP_LOOKUP, _MAP_UPDATE, _MAP_DELETE, _MAP_NEXT_KEY = 0, 1, 2, 3, 4
_OBJ_PIN, _OBJ_GET, _OBJ_INFO = 6, 7, 15
_MAP_TYPE_HASH = 1
_MAP_TYPE_LPM_TRIE = 11
_F_NO_PREALLOC = 1  # the kernel requires it of LPM tries
_F_RDONLY = 1 << 3  # BPF_OBJ_GET file_flags: needs only read permission on the pin
_ATTR_SIZE = 128
_libc = ctypes.CDLL(None, use_errno=True)


class IpmanError(Exception):
    """A map that cannot be used; the message says what is missing and how to fix it."""


Ports = tuple[int, int]  # lo, hi inclusive


@dataclass(frozen=True)
class Registration:
    ip: str
    ports: Ports | None
    workload: str

    def where(self) -> str:
        if self.ports is None:
            return self.ip
        lo, hi = self.ports
        return f"{self.ip}:{lo}" if lo == hi else f"{self.ip}:{lo}-{hi}"


def parse_ports(text: str) -> Ports:
    """'8443' or '20000-20999'."""
    lo, dash, hi = text.partition("-")
    try:
        ports = (int(lo), int(hi if dash else lo))
    except ValueError:
        raise IpmanError(f"ports must be PORT or LO-HI, got {text!r}") from None
    check_ports(ports)
    return ports


def check_ports(ports: Ports) -> None:
    lo, hi = ports
    if not (0 < lo <= hi < 65536):
        raise IpmanError(f"ports must be 1-65535 with lo <= hi, got {lo}-{hi}")


def ip_key(ip: str) -> bytes:
    """16 bytes, IPv4 as v4-mapped IPv6: the form the tracepoints give the kernel side."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise IpmanError(f"not an IP address: {ip!r}") from None
    if address.version == 4:
        address = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)
    return address.packed


def port_prefixes(ports: Ports) -> list[tuple[int, int]]:
    """The aligned blocks (first port, prefix bits of the 16-bit port) that cover exactly lo..hi."""
    check_ports(ports)
    lo, hi = ports
    blocks = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        blocks.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return blocks


def ports_keys(ip: str, ports: Ports) -> list[bytes]:
    """One LPM trie key per aligned block of the range."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        raise IpmanError(f"a port range needs an IPv4 address, got {ip!r}") from None
    return [
        struct.pack("=I4s2s2x", 32 + bits, address.packed, first.to_bytes(2, "big"))
        for first, bits in port_prefixes(ports)
    ]


def ports_value(workload: str, ports: Ports) -> bytes:
    return workload_value(workload) + struct.pack("=HH", *ports)


def key_ip(key: bytes) -> str:
    """Inverse of ip_key: v4-mapped addresses come back as plain IPv4."""
    address = ipaddress.IPv6Address(key[:16])
    return str(address.ipv4_mapped or address)


def workload_value(workload: str) -> bytes:
    raw = workload.encode()
    if not raw or len(raw) >= WORKLOAD_LEN or b"\0" in raw:
        raise IpmanError(f"workload must be 1-{WORKLOAD_LEN - 1} bytes without NUL: {workload!r}")
    return raw.ljust(WORKLOAD_LEN, b"\0")


def value_workload(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode(errors="replace")


class WorkloadMaps:
    """The two pinned maps under one pin directory."""

    # name -> (map type, key size, value size, flags)
    SHAPES = {
        IP_MAP: (_MAP_TYPE_HASH, IP_KEY_SIZE, WORKLOAD_LEN, 0),
        PORTS_MAP: (_MAP_TYPE_LPM_TRIE, PORTS_KEY_SIZE, PORTS_VALUE_SIZE, _F_NO_PREALLOC),
    }

    def __init__(self, pin_dir: str | Path, create: bool, max_entries: int = 16384, read_only: bool = False):
        self.pin_dir = Path(pin_dir)
        self._file_flags = _F_RDONLY if read_only else 0
        self._fds: dict[str, int] = {}
        try:
            for name in self.SHAPES:
                self._fds[name] = self._open(name, create, max_entries)
        except BaseException:
            self.close()
            raise

    def fds(self) -> dict[str, int]:
        """Map name -> open file descriptor, valid until close()."""
        return dict(self._fds)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> WorkloadMaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add(self, ip: str, workload: str, ports: Ports | None = None) -> None:
        if ports is None:
            _bpf_elem(_MAP_UPDATE, self._fds[IP_MAP], ip_key(ip), workload_value(workload), what=f"add {ip}")
            return
        keys = ports_keys(ip, ports)
        value = ports_value(workload, ports)
        canonical = key_ip(ip_key(ip))
        for held in self.registrations():
            # The trie answers the longest prefix: an overlapping range would silently take ports.
            if held.ip == canonical and held.ports and held.ports != ports and _overlap(held.ports, ports):
                raise IpmanError(f"{Registration(canonical, ports, workload).where()} overlaps "
                                 f"{held.where()} ({held.workload}): remove that first")
        for key in keys:
            _bpf_elem(_MAP_UPDATE, self._fds[PORTS_MAP], key, value, what=f"add {ip}")

    def remove(self, ip: str, ports: Ports | None = None) -> bool:
        """False when there was no such registration."""
        if ports is None:
            return _delete(self._fds[IP_MAP], ip_key(ip), what=f"remove {ip}")
        keys = ports_keys(ip, ports)
        canonical = key_ip(ip_key(ip))
        # Only a range registered exactly so: its blocks may be shared with a wider registration.
        if not any(r.ip == canonical and r.ports == ports for r in self.registrations()):
            return False
        for key in keys:
            _delete(self._fds[PORTS_MAP], key, what=f"remove {ip}")
        return True

    def registrations(self) -> list[Registration]:
        found = set()
        for key, value in _entries(self._fds[IP_MAP], IP_KEY_SIZE, WORKLOAD_LEN):
            found.add(Registration(key_ip(key), None, value_workload(value)))
        for key, value in _entries(self._fds[PORTS_MAP], PORTS_KEY_SIZE, PORTS_VALUE_SIZE):
            ip = str(ipaddress.IPv4Address(key[4:8]))
            ports = struct.unpack_from("=HH", value, WORKLOAD_LEN)
            found.add(Registration(ip, ports, value_workload(value[:WORKLOAD_LEN])))
        return sorted(found, key=lambda r: (r.ip, r.ports or (0, 0), r.workload))

    def _open(self, name: str, create: bool, max_entries: int) -> int:
        path = self.pin_dir / name
        if not path.exists():
            if not create:
                raise IpmanError(
                    f"no pinned map {path}: nothing registered yet "
                    "(`flowattr ipman add` or `flowattr export` create it)"
                )
            return self._create(path, name, max_entries)
        fd = _bpf_path(_OBJ_GET, path, flags=self._file_flags)
        info = _map_info(fd)
        if info != self.SHAPES[name][:3]:
            os.close(fd)
            raise IpmanError(f"{path} is not a flowattr workload map (type, key, value = {info}); "
                             "remove the pin and let flowattr create it")
        return fd

    def _create(self, path: Path, name: str, max_entries: int) -> int:
        _check_bpffs(self.pin_dir)
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        map_type, key_size, value_size, flags = self.SHAPES[name]
        attr = _attr()
        struct.pack_into("=IIIII", attr, 0, map_type, key_size, value_size, max_entries, flags)
        struct.pack_into("16s", attr, 28, name[:15].encode())
        fd = _bpf(_MAP_CREATE, attr, what=f"create map {name}")
        try:
            _bpf_path(_OBJ_PIN, path, fd)
        except FileExistsError:
            os.close(fd)  # another process pinned it first: use theirs
            return _bpf_path(_OBJ_GET, path)
        return fd


def _overlap(a: Ports, b: Ports) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _delete(fd: int, key: bytes, what: str) -> bool:
    try:
        _bpf_elem(_MAP_DELETE, fd, key, None, what=what)
    except FileNotFoundError:
        return False
    return True


def _entries(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    found = []
    for key in _keys(fd, key_size):
        value = ctypes.create_string_buffer(value_size)
        try:
            _bpf_elem(_MAP_LOOKUP, fd, key, value, what="list")
        except FileNotFoundError:
            continue  # removed while we walked the map
        found.append((key, value.raw))
    return found


def _check_bpffs(directory: Path) -> None:
    while not directory.exists():
        directory = directory.parent
    if not _on_bpffs(directory):
        raise IpmanError(
            f"{directory} is not on a BPF filesystem: mount it with `mount -t bpf bpffs /sys/fs/bpf` "
            "(make ebpf-deps does) or set exporter.pin_dir under a bpffs mount"
        )


def _on_bpffs(directory: Path) -> bool:
    best = ("", "")
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, mount_point, fs_type = line.split()[:3]
            inside = str(directory) == mount_point or str(directory).startswith(
                mount_point.rstrip("/") + "/"
            )
            if inside and len(mount_point) >= len(best[0]):
                best = (mount_point, fs_type)
    return best[1] == "bpf"


def _attr() -> ctypes.Array:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    result = _libc.syscall(_SYS_BPF, cmd, attr, _ATTR_SIZE)
    if result < 0:
        code = ctypes.get_errno()
        if code in (errno.EPERM, errno.EACCES):
            raise IpmanError(
                f"cannot {what}: {os.strerror(code)} (needs root, or CAP_BPF and write access to the pin directory)"
            )
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return result


def _bpf_path(cmd: int, path: Path, fd: int = 0, flags: int = 0) -> int:
    name = ctypes.create_string_buffer(str(path).encode())
    attr = _attr()
    struct.pack_into("=QII", attr, 0, ctypes.addressof(name), fd, flags)
    return _bpf(cmd, attr, what=f"open {path}" if cmd == _OBJ_GET else f"pin {path}")


def _bpf_elem(cmd: int, fd: int, key: bytes, value, what: str) -> None:
    key_buf = ctypes.create_string_buffer(key, len(key))
    if isinstance(value, bytes):
        value = ctypes.create_string_buffer(value, len(value))
    attr = _attr()
    value_address = ctypes.addressof(value) if value is not None else 0
    struct.pack_into("=IIQQQ", attr, 0, fd, 0, ctypes.addressof(key_buf), value_address, 0)
    _bpf(cmd, attr, what=what)


def _keys(fd: int, key_size: int) -> list[bytes]:
    keys = []
    previous = None
    while True:
        key_buf = ctypes.create_string_buffer(previous, key_size) if previous else None
        next_buf = ctypes.create_string_buffer(key_size)
        attr = _attr()
        key_address = ctypes.addressof(key_buf) if key_buf is not None else 0
        struct.pack_into("=IIQQ", attr, 0, fd, 0, key_address, ctypes.addressof(next_buf))
        try:
            _bpf(_MAP_NEXT_KEY, attr, what="list")
        except FileNotFoundError:
            return keys
        previous = next_buf.raw
        keys.append(previous)


def _map_info(fd: int) -> tuple[int, int, int]:
    info = ctypes.create_string_buffer(80)
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
    _bpf(_OBJ_INFO, attr, what="inspect map")
    map_type, _id, key_size, value_size = struct.unpack_from("=IIII", info, 0)
    return map_type, key_size, value_size
