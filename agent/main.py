"""``zc-agent``: export directory roots, move file bytes to peers, report health to the controller."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from zcrepl.agent.daemon import Agent
from zcrepl.core.config import AgentConfig, load_config
from zcrepl.core.errors import ConfigError
from zcrepl.core.logs import kv, setup_logging

log = logging.getLogger("zcrepl.agent")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zc-agent", description=__doc__)
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with the same keys as the flags")
    p.add_argument("--name", help="agent (host) name operators use in HOST:/path (default: short hostname)")
    p.add_argument("--controller", metavar="HOST:PORT[,HOST:PORT...]",
                   help="controller address, or several sharing one PostgreSQL store: the agent follows their leader "
                        "(default 127.0.0.1:7420)")
    p.add_argument("--export", dest="exports", action="append", metavar="DIR",
                   help="directory root to serve; repeat for several")
    p.add_argument("--export-policy", dest="export_policy", action="append", metavar="DIR:KEY=VALUE,...",
                   help="what peers may set in export DIR: owners=keep|none, uids=LO-HI, gids=LO-HI, "
                        "uid_map=SRC>DST, gid_map=SRC>DST, allow_privileged_xattrs=yes|no (repeatable)")
    p.add_argument("--listen", metavar="HOST:PORT", help="gRPC API address (port 0 = any free port)")
    p.add_argument("--data-listen", metavar="HOST:PORT", help="data port address (port 0 = any free port)")
    tls = p.add_argument_group("TLS (mutual; required unless --insecure)")
    tls.add_argument("--ca", metavar="FILE", help="the cluster CA certificate (PEM)")
    tls.add_argument("--cert", metavar="FILE", help="this agent's certificate (zcrepl://agent/NAME)")
    tls.add_argument("--key", metavar="FILE", help="its private key")
    tls.add_argument("--crl", metavar="FILE", help="revocation list, reloaded when it changes")
    tls.add_argument("--join", metavar="TOKEN",
                     help="enrol with a token from `zc-ctl token create --agent NAME` (once; kept in --state-dir)")
    tls.add_argument("--state-dir", metavar="DIR", help="where an enrolled certificate is kept "
                     "(default /var/lib/zcrepl-agent)")
    tls.add_argument("--insecure", action="store_true", default=None,
                     help="no TLS and no authentication (binds loopback unless --listen says otherwise)")
    p.add_argument("--io-timeout", type=float, metavar="SECONDS",
                   help="a data connection silent this long fails its transfer (default 60)")
    p.add_argument("--advertise-host", metavar="HOST", help="host to advertise when listening on 0.0.0.0")
    p.add_argument("--site", metavar="LABEL",
                   help="where this agent runs (the controller's encrypt = cross-site compares these)")
    p.add_argument("--source-address", dest="source_addresses", action="append", metavar="IP",
                   help="another address this host's data connections may leave from (multi-homed hosts); "
                        "repeatable")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics over plain HTTP here (off unless set; port 0 = any free port)")
    p.add_argument("--health-listen", metavar="HOST:PORT",
                   help="serve only grpc.health.v1 in plaintext here, for probes without TLS such as "
                        "Kubernetes' (off unless set; port 0 = any free port)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["kv", "json"])
    p.add_argument("--ready-file", metavar="FILE", help="write bound addresses as JSON here once serving")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    try:
        config = load_config(AgentConfig, args.config, flags)
    except ConfigError as err:
        print(f"zc-agent: {err}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format, static={"service": "zc-agent", "host": config.name})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with Agent(config) as agent:
            signal.signal(signal.SIGHUP, lambda *_: agent.reload())
            stop.wait()
            log.info("signal received, shutting down", extra=kv(name=config.name))
    except ConfigError as err:
        print(f"zc-agent: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        log.error("cannot start", extra=kv(error=err))
        print(f"zc-agent: cannot start: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
