"""``zc-controller``: the registry of agents, the durable job store and the scheduler."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from zcrepl.controller.daemon import Controller
from zcrepl.core.config import ControllerConfig, load_config
from zcrepl.core.errors import ConfigError
from zcrepl.core.logs import kv, setup_logging

log = logging.getLogger("zcrepl.controller")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zc-controller", description=__doc__)
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with the same keys as the flags")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="gRPC address (default 0.0.0.0:7420, 127.0.0.1:7420 with --insecure; port 0 = any)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="the controller's own files: the default SQLite store, auto-pki (default /var/lib/zcrepl)")
    p.add_argument("--store", metavar="PATH|URL",
                   help="the job store: a SQLite file or a postgresql://USER@HOST/DB URL "
                        "(default STATE_DIR/controller.sqlite3)")
    tls = p.add_argument_group("TLS (mutual; required unless --insecure)")
    tls.add_argument("--ca", metavar="FILE", help="the cluster CA certificate (PEM)")
    tls.add_argument("--cert", metavar="FILE", help="this controller's certificate (zcrepl://controller/NAME)")
    tls.add_argument("--key", metavar="FILE", help="its private key")
    tls.add_argument("--crl", metavar="FILE", help="revocation list, reloaded when it changes")
    tls.add_argument("--ca-key", metavar="FILE", help="the CA's key: lets the controller enrol agents and renew")
    tls.add_argument("--auto-pki", action="store_true", default=None,
                     help="keep a CA of the controller's own in STATE_DIR/pki (created on the first start)")
    tls.add_argument("--san", action="append", metavar="NAME_OR_IP",
                     help="with --auto-pki: another DNS name or IP for the controller's certificate (repeatable)")
    tls.add_argument("--enroll-listen", metavar="HOST:PORT",
                     help="where agents enrol with a join token (default: the --listen host, port 7423)")
    tls.add_argument("--token-ttl", type=float, metavar="SECONDS", help="default lifetime of join tokens (3600)")
    tls.add_argument("--agent-cert-days", type=int, metavar="N", help="lifetime of enrolled agents' certificates")
    tls.add_argument("--insecure", action="store_true", default=None,
                     help="no TLS and no authentication at all (binds loopback unless --listen says otherwise)")
    p.add_argument("--heartbeat-interval", type=float, metavar="SECONDS", help="agent heartbeat cadence")
    p.add_argument("--offline-after", type=float, metavar="SECONDS", help="silence after which an agent is offline")
    p.add_argument("--max-attempts", type=int, metavar="N", help="attempts per job before it fails (default 5)")
    p.add_argument("--retry-base", type=float, metavar="SECONDS", help="first retry delay, doubling each time")
    p.add_argument("--retry-max", type=float, metavar="SECONDS", help="longest retry delay")
    p.add_argument("--max-jobs-per-host", type=int, metavar="N", help="concurrent jobs per host (default 4)")
    p.add_argument("--stall-timeout", type=float, metavar="SECONDS",
                   help="fail a running attempt after this long without a report from its agents")
    p.add_argument("--attempt-grace", type=float, metavar="SECONDS",
                   help="hold a running attempt this long for its agent to come back after losing it (60)")
    p.add_argument("--max-cpu-percent", type=float, metavar="PCT", help="start jobs only under this CPU %% (85)")
    p.add_argument("--max-load-per-core", type=float, metavar="N", help="start jobs only under this load/core (1.5)")
    p.add_argument("--max-disk-busy-percent", type=float, metavar="PCT",
                   help="start jobs only under this disk busy %% (90)")
    p.add_argument("--max-net-percent", type=float, metavar="PCT", help="start jobs only under this NIC use %% (85)")
    p.add_argument("--high-cpu-percent", type=float, metavar="PCT",
                   help="slow running transfers above this CPU %% (95)")
    p.add_argument("--high-load-per-core", type=float, metavar="N",
                   help="slow running transfers above this load/core (2.5)")
    p.add_argument("--high-disk-busy-percent", type=float, metavar="PCT",
                   help="slow running transfers above this disk busy %% (98)")
    p.add_argument("--high-net-percent", type=float, metavar="PCT",
                   help="slow running transfers above this NIC use %% (95)")
    p.add_argument("--host-limit", dest="host_limits", action="append", metavar="HOST:jobs=N,streams=N",
                   help="ceilings for one host (repeatable): its concurrent jobs, its streams in all")
    p.add_argument("--link-limit", dest="link_limits", action="append", metavar="SRC>DST:streams=N",
                   help="ceiling of the streams of all jobs on one link (repeatable)")
    p.add_argument("--encrypt", choices=["never", "always", "cross-site"],
                   help="data-plane TLS for jobs that did not ask (--encrypt always does): never (default), "
                        "always, or cross-site (agents whose --site labels differ or are unset)")
    p.add_argument("--encrypt-link", dest="encrypt_links", action="append", metavar="SRC>DST:always|never",
                   help="per-link override of --encrypt (SRC or DST may be *); repeatable")
    p.add_argument("--sync-ticket-ttl", type=float, metavar="SECONDS",
                   help="lifetime of a watch rule's data-port ticket (3600); rotated at three quarters of it")
    p.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics over plain HTTP here (off unless set; port 0 = any free port)")
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="serve the read-only web view here, over HTTPS with the gRPC certificate (off unless set)")
    p.add_argument("--http-client-cert", choices=["required", "optional"],
                   help="optional (default): no browser certificate, loopback addresses only; required: browsers "
                        "present an operator certificate of the cluster CA")
    p.add_argument("--health-listen", metavar="HOST:PORT",
                   help="serve only grpc.health.v1 in plaintext here, for probes without TLS such as "
                        "Kubernetes' (off unless set; port 0 = any free port)")
    ha = p.add_argument_group("several controllers on one PostgreSQL store (one leads)")
    ha.add_argument("--advertise", metavar="HOST:PORT",
                    help="where agents and zc-ctl reach this controller; followers name the leader by it "
                         "(default: the bound --listen address)")
    ha.add_argument("--lease-renew", type=float, metavar="SECONDS", help="the leader checks its lease this often (1)")
    ha.add_argument("--lease-timeout", type=float, metavar="SECONDS",
                    help="the leader stops leading when a check fails or takes longer than this (2)")
    ha.add_argument("--lease-poll", type=float, metavar="SECONDS", help="a follower tries to take the lease this "
                                                                          "often (0.5)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["kv", "json"])
    p.add_argument("--ready-file", metavar="FILE", help="write the bound address as JSON here once serving")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    try:
        config = load_config(ControllerConfig, args.config, flags)
    except ConfigError as err:
        print(f"zc-controller: {err}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format, static={"service": "zc-controller"})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with Controller(config) as controller:
            signal.signal(signal.SIGHUP, lambda *_: controller.reload())
            stop.wait()
            log.info("signal received, shutting down", extra=kv(state=config.state_dir))
    except ConfigError as err:
        print(f"zc-controller: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:
        print(f"zc-controller: cannot start: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
