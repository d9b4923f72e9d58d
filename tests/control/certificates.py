"""Certificates for the TLS tests, made on the spot: a CA, a server certificate for
127.0.0.1 and localhost, client certificates naming users, and a second CA that
nothing trusts."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


class Authority:
    """A CA that writes what it issues into ``folder``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.cert = folder / f"{name}.pem"
        self.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + _DAY)
        )

    def server(self, name: str = "server") -> Issued:
        """A server certificate for 127.0.0.1 and localhost."""
        names = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        return self._issue(name, name, names, ExtendedKeyUsageOID.SERVER_AUTH)

    def client(
        self, file_name: str, common_name: str | None, sans: Sequence[str] = ()
    ) -> Issued:
        """A client certificate whose subject CN is ``common_name`` (none if None)
        and whose SANs are these DNS names."""
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in sans]
        return self._issue(
            file_name, common_name, names, ExtendedKeyUsageOID.CLIENT_AUTH
        )

    def _issue(
        self,
        file_name: str,
        common_name: str | None,
        names: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
            if common_name
            else []
        )
        builder = self._builder(subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), False
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        certificate = builder.sign(self._key, hashes.SHA256())
        issued = Issued(
            self.folder / f"{file_name}.crt", self.folder / f"{file_name}.key"
        )
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


@dataclass(frozen=True)
class Pki:
    """What one test session's TLS tests share."""

    ca: Authority
    server: Issued
    # Trusted by no server or client of the tests.
    stranger: Authority

    def client(self, name: str) -> Issued:
        """A client certificate of the grid's CA whose CN is ``name``."""
        issued = Issued(
            self.ca.folder / f"client-{name}.crt", self.ca.folder / f"client-{name}.key"
        )
        if issued.cert.exists():
            return issued
        return self.ca.client(f"client-{name}", name)


def make_pki(folder: Path) -> Pki:
    ca = Authority(folder, "grid-ca")
    return Pki(ca, ca.server(), Authority(folder, "stranger-ca"))
