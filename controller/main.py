"""``zc-controller``: the registry of agents, the durable job store and the scheduler."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from zcrepl.controller.daemon import Controller
from zcrepl.core import settings
from zcrepl.core.config import ControllerConfig
from zcrepl.core.errors import ConfigError
from zcrepl.core.logs import kv, setup_logging

log = logging.getLogger("zcrepl.controller")


def build_parser() -> argparse.ArgumentParser:
    return settings.build_parser(ControllerConfig, "zc-controller", __doc__)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = settings.load_config(ControllerConfig, args.config, settings.given(args))
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
