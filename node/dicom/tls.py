"""DICOM TLS with Python's ssl: the BCP 195 TLS Secure Transport Connection Profile
(PS3.15 B.12, BCP 195 = RFC 8996 + RFC 9325).

TLS 1.2 or 1.3 only (RFC 8996 deprecates 1.0 and 1.1). For TLS 1.2 the cipher suites are the
four ECDHE AES-GCM suites RFC 9325 section 4.2 recommends, which DCMTK proposes for the same
profile; DHE suites are left out because PS3.15 B.13 forbids them where the DHE key length cannot
be set. TLS 1.3 uses OpenSSL's AEAD suites (TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
TLS_CHACHA20_POLY1305_SHA256), all allowed by RFC 9325.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from node.config import TLSConfig

BCP195_TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256",  # TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    "ECDHE-RSA-AES128-GCM-SHA256",    # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    "ECDHE-ECDSA-AES256-GCM-SHA384",  # TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    "ECDHE-RSA-AES256-GCM-SHA384",    # TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
))
"""OpenSSL names of the TLS 1.2 suites of RFC 9325 section 4.2 (IANA names in the comments)."""

_CLIENT_CERTIFICATES = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be loaded; names the file and the reason."""


def _restrict(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _load(what: str, path: Path | None, action) -> None:
    try:
        action()
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"tls.{what} {path}: cannot load ({exc})") from exc


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """The listener's context: the node's certificate, peers' certificates checked against
    ``ca_certificates`` as ``client_certificates`` says (TLSConfig checked both files are set).
    The listener wraps each accepted socket without a handshake and makes it in the
    connection's own thread, within its deadline (``node.dicom.receiver``,
    ``node.dicom.pending``)."""
    context = _restrict(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load("certificate", tls.certificate,
          lambda: context.load_cert_chain(tls.certificate, tls.private_key))
    context.verify_mode = _CLIENT_CERTIFICATES[tls.client_certificates]
    if tls.ca_certificates is not None:
        _load("ca_certificates", tls.ca_certificates,
              lambda: context.load_verify_locations(cafile=tls.ca_certificates))
    return context


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """The context the node connects with: the peer's certificate must chain to
    ``ca_certificates`` (the system's CAs when unset) and name the host; the node presents its
    own certificate when one is configured."""
    context = _restrict(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # check_hostname, CERT_REQUIRED
    if tls.ca_certificates is not None:
        _load("ca_certificates", tls.ca_certificates,
              lambda: context.load_verify_locations(cafile=tls.ca_certificates))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.certificate is not None and tls.private_key is not None:
        _load("certificate", tls.certificate,
              lambda: context.load_cert_chain(tls.certificate, tls.private_key))
    return context
