"""Who may speak for a VM: peer identities for the gateway's UNIX and TCP listeners.

A real VMBus channel belongs to its VM by construction; a socket does not, so the gateway must
establish who is at the other end before it lets a hello claim a VM id:

* **UNIX socket**: the kernel tells us the peer's uid (``SO_PEERCRED``); a uid on the allow-list
  (by default the service's own uid and root) is a host-local process the operator trusts with
  every VM, as it could read the SQLite log anyway.
* **TCP with TLS client certificates**: the certificate (verified against ``--tls-client-ca``)
  names the VM ids it may claim, as its subject CN or its DNS subject alternative names.
* **TCP with per-VM tokens**: ``HMAC-SHA256(host secret, vm id)``, hex; the hello carries it as
  ``"token"`` and it is compared in constant time. ``hvdm gateway token VM`` prints one.
* **Plain TCP** only with ``--insecure``: any peer may claim any VM.

The identity (``PeerIdentity.name``) is what "the same peer" means for a resumed channel.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: A token is 64 hex digits; anything longer in a hello is refused before any comparison.
TOKEN_HEX_CHARS = 64
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AuthConfigError(ValueError):
    """The gateway's authentication settings cannot work (one line, for the CLI)."""


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """An authenticated peer. ``vms`` is the set of VM ids it may claim; None means any."""

    name: str
    vms: frozenset[str] | None = None
    #: Set for a peer refused whatever its hello says (the refusal's reason).
    refusal: str | None = None

    def entitled(self, vm: str) -> bool:
        return self.vms is None or vm in self.vms


def default_allowed_uids() -> frozenset[int]:
    return frozenset({os.getuid(), 0})


@dataclass(frozen=True, slots=True)
class GatewayAuth:
    """How the gateway authenticates peers (one typed object, built from CLI flags).

    ``tls`` is a server context; when it verifies client certificates (``verify_mode`` is
    CERT_REQUIRED) the certificate names the VMs. ``token_secret`` enables per-VM tokens.
    """

    allowed_uids: frozenset[int] = field(default_factory=default_allowed_uids)
    tls: ssl.SSLContext | None = None
    token_secret: bytes | None = None
    insecure: bool = False
    tls_handshake_timeout_s: float = 5.0

    @property
    def client_certs(self) -> bool:
        return self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED

    def check_tcp(self) -> None:
        """Refuse a TCP listener that would let an unauthenticated peer claim a VM."""
        if self.client_certs or self.token_secret is not None or self.insecure:
            return
        raise AuthConfigError(
            "TCP guests must authenticate: give --tls-cert/--tls-key with --tls-client-ca (client "
            "certificates), or --token-secret-file (per-VM tokens); plain TCP needs --insecure"
        )

    @property
    def socket_mode(self) -> int:
        """0600 when only the service's own uid (and root) may connect, else 0660 (share the group)."""
        return 0o600 if self.allowed_uids <= {os.getuid(), 0} else 0o660


def vm_token(secret: bytes, vm: str) -> str:
    """The token a VM's guest presents over TCP: HMAC-SHA256(secret, vm id), hex.

    >>> vm_token(b"host secret", "vm1")[:16]
    '7ec7dd5cd807b549'
    """
    return hmac.new(secret, vm.encode(), hashlib.sha256).hexdigest()


def token_matches(secret: bytes, vm: str, token: str | None) -> bool:
    """Constant-time check of a presented token (no early exit on the first differing byte)."""
    if not isinstance(token, str) or len(token) != TOKEN_HEX_CHARS:
        return False
    return hmac.compare_digest(vm_token(secret, vm).encode(), token.encode("ascii", "replace"))


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The host secret: the file's bytes, surrounding whitespace removed; at least 16 bytes."""
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as e:
        raise AuthConfigError(f"cannot read the token secret {path}: {e.strerror or e}") from None
    if len(secret) < 16:
        raise AuthConfigError(f"the token secret in {path} is shorter than 16 bytes")
    return secret


def server_tls_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """A TLS server context; with ``client_ca`` every client must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.load_verify_locations(cafile=client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise AuthConfigError(f"cannot load the TLS files: {e}") from None
    return ctx


def build_auth(
    *,
    allow_uids: list[int] | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    token_secret_file: str | None = None,
    insecure: bool = False,
) -> GatewayAuth:
    """The CLI's flags as a ``GatewayAuth``; every inconsistency is one ``AuthConfigError``."""
    if bool(tls_cert) != bool(tls_key):
        raise AuthConfigError("--tls-cert and --tls-key go together")
    if tls_client_ca and not tls_cert:
        raise AuthConfigError("--tls-client-ca needs --tls-cert and --tls-key")
    uids = frozenset(allow_uids) if allow_uids else default_allowed_uids()
    if any(u < 0 or u >= 1 << 32 for u in uids):
        raise AuthConfigError("--allow-uid takes uids between 0 and 2**32-1")
    return GatewayAuth(
        allowed_uids=uids,
        tls=server_tls_context(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None,
        token_secret=read_secret(token_secret_file) if token_secret_file else None,
        insecure=insecure,
    )


def peer_uid(sock: Any) -> int | None:
    """The uid of a UNIX-socket peer, from the kernel (``SO_PEERCRED``); None where unsupported."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, opt, _PEERCRED.size)
    except OSError:
        return None
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return int(uid)


def certificate_names(cert: dict[str, Any] | None) -> frozenset[str]:
    """The names a verified client certificate vouches for: its subject CN and DNS SANs."""
    if not cert:
        return frozenset()
    names: set[str] = set()
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                names.add(value)
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "DNS" and isinstance(value, str):
            names.add(value)
    return frozenset(names)
