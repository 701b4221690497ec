"""``zc-agent``: export directory roots, move file bytes to peers, report health to the controller."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from zcrepl.agent.daemon import Agent
from zcrepl.core import settings
from zcrepl.core.config import AgentConfig
from zcrepl.core.errors import ConfigError
from zcrepl.core.logs import kv, setup_logging

log = logging.getLogger("zcrepl.agent")


def build_parser() -> argparse.ArgumentParser:
    return settings.build_parser(AgentConfig, "zc-agent", __doc__)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = settings.load_config(AgentConfig, args.config, settings.given(args))
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
