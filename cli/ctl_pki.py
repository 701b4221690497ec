"""zc-ctl's certificate commands and TLS options.

``pki init|issue|revoke|show`` work on a CA directory and never talk to a controller; ``token create``,
``cert revoke`` and ``cert revoked`` ask the controller (admin role for the first two).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from zcrepl.core.errors import ConfigError, UserError
from zcrepl.core.wellknown import ROLES

if TYPE_CHECKING:  # the parser is built for every command, --help included: these load when used
    from zcrepl.cli.ctl_out import Out
    from zcrepl.core.trust import Trust


def add_tls_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS (mutual; or set ZC_CA, ZC_CERT, ZC_KEY)")
    g.add_argument("--ca", metavar="FILE", default=os.environ.get("ZC_CA", ""), help="the cluster CA certificate")
    g.add_argument("--cert", metavar="FILE", default=os.environ.get("ZC_CERT", ""),
                   help="your operator certificate (zc-ctl pki issue DIR --operator NAME --role ROLE)")
    g.add_argument("--key", metavar="FILE", default=os.environ.get("ZC_KEY", ""), help="its private key")
    g.add_argument("--insecure", action="store_true",
                   default=os.environ.get("ZC_INSECURE", "").lower() in ("1", "true", "yes"),
                   help="talk plaintext to a controller started with --insecure")


def client_trust(args: argparse.Namespace) -> Trust | None:
    """The operator's material, or None with --insecure; UserError says how to get material."""
    given = [n for n in ("ca", "cert", "key") if getattr(args, n)]
    if args.insecure:
        if given:
            raise UserError("--insecure cannot be combined with --ca/--cert/--key (or ZC_CA/ZC_CERT/ZC_KEY)")
        return None
    from zcrepl.core.trust import TlsPaths, Trust

    if len(given) != 3:
        raise UserError(
            "no TLS material: pass --ca FILE --cert FILE --key FILE (or set ZC_CA, ZC_CERT, ZC_KEY); an admin makes "
            "them with zc-ctl pki issue DIR --operator NAME --role read|operator|admin (with --auto-pki the "
            "controller keeps an admin certificate in STATE_DIR/pki/admin.pem); --insecure for a plaintext controller")
    try:
        return Trust(TlsPaths(args.ca, args.cert, args.key), kind="operator", check=False)
    except ConfigError as err:
        raise UserError(str(err)) from err


def explain_failure(trust: Trust) -> str:
    """After a failed connection: what is wrong with the operator's files, if anything ("" when they are fine)."""
    from zcrepl.core.trust import load_material

    try:
        load_material(trust.paths, kind="operator")
    except ConfigError as err:
        return str(err)
    return ""


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pk = sub.add_parser("pki", help="make a cluster CA and certificates (offline, from a CA directory)")
    ps = pk.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")
    i = ps.add_parser("init", help="create DIR/ca.pem and DIR/ca.key")
    i.add_argument("dir", metavar="DIR")
    iss = ps.add_parser("issue", help="write DIR/NAME.pem and DIR/NAME.key (0600) signed by DIR's CA")
    iss.add_argument("dir", metavar="DIR")
    who = iss.add_mutually_exclusive_group(required=True)
    who.add_argument("--controller", metavar="NAME")
    who.add_argument("--agent", metavar="NAME")
    who.add_argument("--operator", metavar="NAME")
    iss.add_argument("--role", choices=ROLES, help="with --operator: read, operator or admin")
    iss.add_argument("--san", action="append", default=[], metavar="DNS_OR_IP",
                     help="another DNS name or IP the certificate is valid for (repeatable)")
    iss.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    rv = ps.add_parser("revoke", help="add DIR/NAME.pem to DIR/crl.pem (daemons given --crl reload it)")
    rv.add_argument("dir", metavar="DIR")
    rv.add_argument("name", metavar="NAME")
    sh = ps.add_parser("show", help="print who a certificate names, its serial and validity")
    sh.add_argument("file", metavar="CERT.pem")

    tk = sub.add_parser("token", help="join tokens for agents (admin)")
    ts = tk.add_subparsers(dest="token_command", required=True, metavar="TOKEN_COMMAND")
    tc = ts.add_parser("create", help="print a one-time token: zc-agent --join TOKEN enrols with it")
    tc.add_argument("--agent", required=True, metavar="NAME")
    tc.add_argument("--ttl", type=parse_duration, default=0.0, metavar="DURATION",
                    help="how long it stays valid: 90s, 30m, 1h, 2d (default: the controller's, 1h)")
    tc.add_argument("--json", action="store_true")

    ce = sub.add_parser("cert", help="revoke certificates the controller issued, or list revocations")
    cs = ce.add_subparsers(dest="cert_command", required=True, metavar="CERT_COMMAND")
    cr = cs.add_parser("revoke", help="revoke every certificate issued to NAME (admin); its sessions close at once")
    cr.add_argument("name", nargs="?", default="", metavar="NAME")
    cr.add_argument("--serial", default="", help="revoke one certificate by its decimal serial instead")
    cs.add_parser("revoked", help="list revoked certificates")


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        return float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 1h or 2d") from None


def run_pki(args: argparse.Namespace, out: Out) -> int:
    """The offline commands; ConfigError for bad input."""
    from pathlib import Path

    from zcrepl.core import pki  # cryptography: imported only by the commands that need it

    d = Path(args.dir) if hasattr(args, "dir") else Path()
    if args.pki_command == "init":
        out.line(f"created {pki.init_ca(d)} and {d / pki.CA_KEY_FILE} (keep the key private: whoever has it can "
                 "issue any identity)")
    elif args.pki_command == "issue":
        kind, name = next((k, getattr(args, k)) for k in ("controller", "agent", "operator") if getattr(args, k))
        if kind == "operator" and not args.role:
            raise ConfigError("--operator needs --role read|operator|admin")
        cert, key = pki.issue_files(d, kind, name, role=args.role or "", sans=tuple(args.san), days=args.days)
        out.line(f"wrote {cert} ({pki.identity_uri(kind, name, args.role or '')}, {args.days} days) and {key}")
    elif args.pki_command == "revoke":
        serial, total = pki.revoke(d, args.name)
        out.line(f"revoked {args.name} (serial {serial}); {d / pki.CRL_FILE} now lists {total}; daemons started "
                 "with --crl pointing at it stop accepting it within a second")
    elif args.pki_command == "show":
        try:
            shown = pki.load_cert(Path(args.file).read_bytes())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read a certificate from {args.file}: {err}") from err
        ident = pki.identity_of(shown)
        out.line(f"{ident.uri if ident else 'no zcrepl identity'}; serial {shown.serial_number}; valid "
                 f"{shown.not_valid_before_utc:%Y-%m-%d} to {shown.not_valid_after_utc:%Y-%m-%d}; "
                 f"sha256 {pki.fingerprint(shown)}")
    return 0


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
