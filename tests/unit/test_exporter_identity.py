"""The host identity file: plain text, or a certificate's SPIFFE URI SAN, else its subject CN."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.identity import IdentityError, read_identity


def certificate(common_name: str | None, uris: list[str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_plain_text_holds_the_id(tmp_path):
    path = tmp_path / "identity"
    path.write_text("# written by the platform\n\n  checkout/host-17  \n")
    assert read_identity(path) == "checkout/host-17"


def test_certificate_spiffe_uri_wins_over_cn(tmp_path):
    path = tmp_path / "cert.pem"
    path.write_bytes(certificate("host-17", ["https://example.com", "spiffe://prod/ns/shop/sa/checkout"]))
    assert read_identity(path) == "spiffe://prod/ns/shop/sa/checkout"


def test_certificate_without_spiffe_uri_gives_its_cn(tmp_path):
    path = tmp_path / "cert.pem"
    path.write_bytes(certificate("host-17", []))
    assert read_identity(path) == "host-17"


def test_missing_file_means_no_identity_but_a_useless_one_is_an_error(tmp_path):
    assert read_identity(tmp_path / "absent") is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(IdentityError, match="empty"):
        read_identity(tmp_path / "empty")
    (tmp_path / "nameless.pem").write_bytes(certificate(None, []))
    with pytest.raises(IdentityError, match="neither"):
        read_identity(tmp_path / "nameless.pem")
