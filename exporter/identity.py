"""The host identity: the local workload when the workload maps have no entry. Read from a file:
a PEM certificate (its SPIFFE URI SAN, else its subject CN) or plain text holding the id."""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID


class IdentityError(Exception):
    """The identity file exists but names nobody."""


def read_identity(path: str | Path) -> str | None:
    """None when there is no identity file: flows then carry local_workload null."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IdentityError(f"cannot read identity file {path}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" in data:
        return _certificate_identity(data, path)
    for line in data.decode(errors="replace").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise IdentityError(f"identity file {path} is empty")


def _certificate_identity(pem: bytes, path: str | Path) -> str:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise IdentityError(f"identity file {path} holds an unreadable certificate: {e}") from None
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in names.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("spiffe://"):
                return uri
    except x509.ExtensionNotFound:
        pass  # no SAN: the subject CN names the host
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common_names:
        return str(common_names[0].value)
    raise IdentityError(f"certificate in {path} has neither a SPIFFE URI SAN nor a subject CN")


class _Sockaddr(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("data", ctypes.c_ubyte * 26)]


class _Ifaddrs(ctypes.Structure):
    pass


_Ifaddrs._fields_ = [
    ("next", ctypes.POINTER(_Ifaddrs)),
    ("name", ctypes.c_char_p),
    ("flags", ctypes.c_uint),
    ("addr", ctypes.POINTER(_Sockaddr)),
    ("netmask", ctypes.POINTER(_Sockaddr)),
    ("ifu", ctypes.c_void_p),
    ("data", ctypes.c_void_p),
]


def interface_addresses() -> set[str]:
    """The addresses configured on this network namespace's interfaces (getifaddrs(3)), without
    loopback: the identity's heartbeats claim an address only while it is still configured here."""
    libc = ctypes.CDLL(None, use_errno=True)
    head = ctypes.POINTER(_Ifaddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        return set()
    found = set()
    try:
        entry = head
        while entry:
            sockaddr = entry.contents.addr
            if sockaddr:
                family, raw = sockaddr.contents.family, bytes(sockaddr.contents.data)
                if family == socket.AF_INET:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[2:6]))
                elif family == socket.AF_INET6:
                    found.add(socket.inet_ntop(socket.AF_INET6, raw[6:22]))
            entry = entry.contents.next
    finally:
        libc.freeifaddrs(head)
    return {a for a in found if not ipaddress.ip_address(a).is_loopback}
