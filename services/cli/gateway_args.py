"""The gateway's security and resource flags, shared by ``hvdm run`` and ``hvdm gateway``.

One definition so both deployments authenticate guests the same way (see
``services.vmbus_gateway.auth``) and bound them with the same limits.
"""

from __future__ import annotations

import argparse

from ..vmbus_gateway.auth import GatewayAuth, build_auth
from ..vmbus_gateway.server import GatewayLimits
from .arg_types import FloatArg, IntArg


def add_gateway_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guest authentication and limits (see README, Security)")
    g.add_argument(
        "--allow-uid",
        type=IntArg(0, (1 << 32) - 1),
        action="append",
        metavar="UID",
        help="uid allowed on the UNIX socket (repeatable; default: this service's uid and root)",
    )
    g.add_argument("--tls-cert", metavar="PEM", help="TLS certificate of the TCP listener")
    g.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    g.add_argument(
        "--tls-client-ca", metavar="PEM", help="CA for client certificates; a certificate's CN/DNS SANs name its VMs"
    )
    g.add_argument(
        "--token-secret-file", metavar="FILE", help="host secret for per-VM tokens (hvdm gateway token VM prints one)"
    )
    g.add_argument("--insecure", action="store_true", help="allow plain, unauthenticated TCP (any peer, any VM)")
    g.add_argument(
        "--keepalive",
        type=FloatArg(0.0, 86400.0, low_open=True),
        metavar="SECONDS",
        help="TCP keepalive after SECONDS idle (default off)",
    )
    g.add_argument(
        "--max-new-vms-per-peer", type=IntArg(1, 10_000_000), default=GatewayLimits().max_new_vms_per_peer, metavar="N"
    )
    g.add_argument(
        "--max-new-vms-per-minute",
        type=IntArg(1, 10_000_000),
        default=GatewayLimits().max_new_vms_per_window,
        metavar="N",
    )


def gateway_auth(args: argparse.Namespace) -> GatewayAuth:
    """Raises ``AuthConfigError`` with one line for the user."""
    auth = build_auth(
        allow_uids=args.allow_uid,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token_secret_file=args.token_secret_file,
        insecure=args.insecure,
    )
    if args.tcp:
        auth.check_tcp()
    return auth


def gateway_limits(args: argparse.Namespace, *, status_interval_s: float = 1.0) -> GatewayLimits:
    """The flags over the config file's ``[gateway_limits]`` over the defaults."""
    from dataclasses import replace

    from .config_file import config_of

    base = replace(GatewayLimits(), **config_of(args).gateway_limits())
    return replace(
        base,
        keepalive_s=args.keepalive,
        max_new_vms_per_peer=args.max_new_vms_per_peer,
        max_new_vms_per_window=args.max_new_vms_per_minute,
        status_interval_s=status_interval_s,
    )
