"""http_listen and http_client_cert: off unless set, from every layer, and an unauthenticated view on loopback only."""

from __future__ import annotations

from pathlib import Path

import pytest

from zcrepl.controller.main import build_parser
from zcrepl.core.config import ControllerConfig, load_config
from zcrepl.core.errors import ConfigError

TLS = {"ca": "ca.pem", "cert": "c.pem", "key": "c.key"}


def test_off_unless_set_and_read_from_each_layer(tmp_path: Path) -> None:
    cfg = load_config(ControllerConfig, None, TLS, {})
    assert cfg.http_listen == "" and cfg.http_client_cert == "optional"
    toml = tmp_path / "c.toml"
    toml.write_text('http_listen = "127.0.0.1:7480"\n')
    assert load_config(ControllerConfig, str(toml), TLS, {}).http_listen == "127.0.0.1:7480"
    env = {"ZC_HTTP_LISTEN": "0.0.0.0:7480", "ZC_HTTP_CLIENT_CERT": "required"}
    cfg = load_config(ControllerConfig, str(toml), TLS, env)
    assert (cfg.http_listen, cfg.http_client_cert) == ("0.0.0.0:7480", "required")
    args = build_parser().parse_args(["--http-listen", "[::1]:0", "--http-client-cert", "optional"])
    assert (args.http_listen, args.http_client_cert) == ("[::1]:0", "optional")


@pytest.mark.parametrize("listen", ["127.0.0.1:7480", "127.0.0.2:0", "[::1]:7480", "localhost:7480"])
def test_without_client_certificates_loopback_is_allowed(listen: str) -> None:
    assert load_config(ControllerConfig, None, {**TLS, "http_listen": listen}, {}).http_listen == listen


@pytest.mark.parametrize("listen", ["0.0.0.0:7480", "[::]:7480", "10.1.2.3:7480", "ctl.example.com:7480"])
def test_without_client_certificates_other_addresses_are_refused(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"served on loopback only.*http_client_cert = required"):
        load_config(ControllerConfig, None, {**TLS, "http_listen": listen}, {})
    cfg = load_config(ControllerConfig, None, {**TLS, "http_listen": listen, "http_client_cert": "required"}, {})
    assert cfg.http_listen == listen


def test_bad_values_are_named() -> None:
    with pytest.raises(ConfigError, match="http_client_cert 'sometimes': choose required or optional"):
        load_config(ControllerConfig, None, {**TLS, "http_client_cert": "sometimes"}, {})
    with pytest.raises(ConfigError, match="'7480' is not HOST:PORT"):
        load_config(ControllerConfig, None, {**TLS, "http_listen": "7480"}, {})
    # An insecure controller has no certificates to ask for: its view is plain HTTP wherever it listens.
    cfg = load_config(ControllerConfig, None, {"insecure": True, "http_listen": "0.0.0.0:7480"}, {})
    assert cfg.http_listen == "0.0.0.0:7480"
