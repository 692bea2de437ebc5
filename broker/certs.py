"""The broker's TLS files: a private CA and a server certificate in the home, or the operator's own.

A city that runs its own broker rarely has a public certificate for it, and
devices must still be able to tell the real broker from an impostor. So
`ensure_certs` makes a private CA (ten years) and a server certificate signed by
it; devices are given the CA certificate (`--mqtt-ca`) and verify the broker
against it, host name included. An operator with certificates of their own
passes them instead (`resolve`), and nothing is generated.

Keys are ECDSA P-256: small, fast to make and to handshake with, and accepted
by mosquitto's OpenSSL and Python's ssl alike. Private keys are written 0600
through `write_private`, so they are never readable by others, not even for a
moment.

Idempotent: files that exist and still fit are reused, so re-running the
broker never invalidates the CA that devices already hold. The server
certificate (two years) is re-issued by the same CA when it no longer fits:
another CA, a missing host name, or less than 30 days left.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ledger.home import Home, write_private

log = logging.getLogger("cityledger.broker")

CA_DAYS = 3650
SERVER_DAYS = 730
RENEW_BEFORE_DAYS = 30
# Always in the server certificate: clients on the broker's machine connect by one of these.
DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1")
CLOCK_SKEW = dt.timedelta(hours=1)  # valid from an hour ago: a device whose clock is a little slow still accepts it


@dataclass(frozen=True)
class CertPaths:
    """What the broker's TLS listener needs, and the CA that clients must trust."""

    ca: Path  # CA certificate: clients verify the broker with it (`--mqtt-ca`)
    cert: Path  # the broker's certificate (may carry its chain)
    key: Path  # the broker's private key
    generated: bool  # made by `ensure_certs` (False: the operator's own files)


# ---------------------------------------------------------------- where they live


def tls_dir(home: Home) -> Path:
    return home.root / "tls"


def ca_cert_path(home: Home) -> Path:
    """The file to hand to devices and services (`--mqtt-ca`)."""
    return tls_dir(home) / "ca.crt"


def ca_key_path(home: Home) -> Path:
    """The CA's private key: whoever holds it can impersonate the broker to every device."""
    return tls_dir(home) / "ca.key"


def server_cert_path(home: Home) -> Path:
    return tls_dir(home) / "server.crt"


def server_key_path(home: Home) -> Path:
    return tls_dir(home) / "server.key"


# ---------------------------------------------------------------- choosing


def resolve(
    home: Home, *, cert: str | None = None, key: str | None = None, ca: str | None = None, hosts: Iterable[str] = ()
) -> CertPaths:
    """The operator's certificate, key and CA when given (all three), else this home's generated ones.

    Half a set is refused rather than completed with generated files: a broker
    certificate that the given CA did not sign would fail every client later, far
    from the cause.
    """
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return ensure_certs(home, hosts)
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise ValueError(
            f"your own TLS files need all of --tls-cert, --tls-key and --tls-ca; missing {', '.join(missing)}"
        )
    paths = CertPaths(
        ca=Path(str(ca)).resolve(), cert=Path(str(cert)).resolve(), key=Path(str(key)).resolve(), generated=False
    )
    for path in (paths.ca, paths.cert, paths.key):
        if not path.is_file():
            raise FileNotFoundError(f"TLS file not found: {path}")
    return paths


def ensure_certs(home: Home, hosts: Iterable[str] = ()) -> CertPaths:
    """This home's CA and server certificate, made now if missing or no longer fitting.

    `hosts` are extra DNS names or IP addresses the broker is reached by, added
    to localhost and 127.0.0.1.
    """
    names = server_names(hosts)
    directory = tls_dir(home)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_key, ca_cert = _ensure_ca(home)
    _ensure_server(home, ca_key, ca_cert, names)
    return CertPaths(ca=ca_cert_path(home), cert=server_cert_path(home), key=server_key_path(home), generated=True)


def server_names(hosts: Iterable[str]) -> tuple[str, ...]:
    """The defaults plus `hosts`, without duplicates, in order; a name with whitespace is refused."""
    names: list[str] = []
    for host in (*DEFAULT_HOSTS, *hosts):
        host = host.strip()
        if not host:
            continue
        if any(c.isspace() for c in host):
            raise ValueError(f"invalid host name for the broker certificate: {host!r}")
        if host not in names:
            names.append(host)
    return tuple(names)


# ---------------------------------------------------------------- the CA


def _ensure_ca(home: Home) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The existing CA if both its files are there, else a new one (and a warning if one file was)."""
    key_path, cert_path = ca_key_path(home), ca_cert_path(home)
    if key_path.exists() and cert_path.exists():
        return _load_key(key_path), x509.load_pem_x509_certificate(cert_path.read_bytes())
    if key_path.exists() or cert_path.exists():
        log.warning(
            "incomplete CA in %s: making a new one; devices holding the old CA certificate must get the new one",
            tls_dir(home),
        )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _ca_certificate(key, f"cityledger private CA {secrets.token_hex(4)}")
    write_private(key_path, _key_pem(key))  # the key first: a cert without its key would be useless
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("made a private CA for the broker: %s", cert_path)
    return key, cert


def _ca_certificate(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        # path_length 0: this CA signs broker certificates, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


# ---------------------------------------------------------------- the server certificate


def _ensure_server(
    home: Home, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: Sequence[str]
) -> None:
    cert_path, key_path = server_cert_path(home), server_key_path(home)
    if key_path.exists() and cert_path.exists():
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if _fits(current, ca_cert, names):
            return
        log.info("re-issuing the broker certificate %s (other CA, new host names or close to expiry)", cert_path)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _server_certificate(key, ca_key, ca_cert, names)
    write_private(key_path, _key_pem(key))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _fits(cert: x509.Certificate, ca_cert: x509.Certificate, names: Sequence[str]) -> bool:
    """Signed by this CA, naming every host in `names`, and not about to expire."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_BEFORE_DAYS):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(v) for v in san.get_values_for_type(x509.DNSName)}
    present |= {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    return all(_san_text(name) in present for name in names)


def _server_certificate(
    key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: Sequence[str]
) -> x509.Certificate:
    now = _now()
    public = key.public_key()
    not_after = min(now + dt.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        # Clients match the host name they dialled against these entries, never against the CN.
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _san_entry(name: str) -> x509.GeneralName:
    """An IP address entry for an address (a client dialling 127.0.0.1 matches only that), else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _san_text(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


# ---------------------------------------------------------------- helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted: mosquitto would ask for a pass phrase on its terminal. The 0600 mode protects it.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key
