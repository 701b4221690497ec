"""zc-ctl opens its controller connection before the command's modules load (cli/dial.py): the channel that
``connect_early`` returns is already connecting, with no call made on it."""

from __future__ import annotations

import socket

from zcrepl.cli.dial import connect_early, targets


def test_targets_keep_the_given_order() -> None:
    assert targets("a:7420, b:7420,,c:7420") == ["a:7420", "b:7420", "c:7420"]
    assert targets("a:7420") == ["a:7420"]


def test_the_connection_starts_before_the_first_call() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        ch = connect_early(f"127.0.0.1:{listener.getsockname()[1]}", None)
        try:
            conn, _ = listener.accept()  # a lazy channel would never dial: no call is made here
            conn.close()
        finally:
            ch.close()
