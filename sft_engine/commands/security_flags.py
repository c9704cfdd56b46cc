"""The admin-key and gRPC TLS flags several commands share (rollout, tune, loadtest), parsed one way."""

from __future__ import annotations

import argparse
from pathlib import Path

from sft_engine.triton.security import ADMIN_KEY_ENV, GrpcTls, resolve_admin_key

__all__ = ["add_admin_key_flag", "add_tls_client_flags", "admin_key_from", "tls_from"]


def add_admin_key_flag(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--admin-key-file", type=Path, default=None, metavar="FILE",
                   help=f"the server's admin key (the file sft-engine serve --admin-key-file wrote; default: ${ADMIN_KEY_ENV})")


def add_tls_client_flags(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--tls", action="store_true", help="gRPC over TLS (implied by the other --tls-* flags)")
    p.add_argument("--tls-ca", type=Path, default=None, metavar="PEM", help="CA certificate that signed the server's (default: the system's)")
    p.add_argument("--tls-client-cert", type=Path, default=None, metavar="PEM", help="mutual TLS: this client's certificate")
    p.add_argument("--tls-client-key", type=Path, default=None, metavar="PEM", help="mutual TLS: this client's private key")


def admin_key_from(args: argparse.Namespace) -> str | None:
    """The key of --admin-key-file, else of the environment variable, else None."""
    return resolve_admin_key(getattr(args, "admin_key_file", None))


def tls_from(args: argparse.Namespace) -> GrpcTls | None:
    """The GrpcTls the --tls* flags describe, validated; None for plaintext."""
    if not (args.tls or args.tls_ca or args.tls_client_cert or args.tls_client_key):
        return None
    tls = GrpcTls(root_certificates=args.tls_ca, certificate_chain=args.tls_client_cert, private_key=args.tls_client_key)
    tls.validate()
    return tls
