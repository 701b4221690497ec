"""The controller's data-plane decisions: when a transfer is encrypted, and where its source may connect from."""

from __future__ import annotations

import pytest

from zcrepl.controller.dataplane import DataPlane, peer_host
from zcrepl.controller.registry import Registry, Session
from zcrepl.core.config import ControllerConfig, parse_encrypt_links
from zcrepl.core.errors import ConfigError
from zcrepl.core.types import AgentInfo


def plane(mode: str = "never", links: tuple[str, ...] = ()) -> DataPlane:
    reg = Registry(offline_after=5.0)
    for name, site in (("a1", "dc1"), ("a2", "dc1"), ("b1", "dc2"), ("x", ""), ("y", "dc1\nforged line"),
                       ("z", "dc1\nforged line")):
        reg.load(name, AgentInfo(name, site=site), 0.0)
    return DataPlane(ControllerConfig(encrypt=mode, encrypt_links=links), reg)


@pytest.mark.parametrize(("mode", "src", "dst", "want"), [
    ("never", "a1", "b1", False),
    ("always", "a1", "a2", True),
    ("cross-site", "a1", "a2", False),  # same site
    ("cross-site", "a1", "b1", True),  # different sites
    ("cross-site", "a1", "x", True),  # a site not set counts as different
    ("cross-site", "x", "x", True),
    ("cross-site", "y", "z", True),  # a label that is not one (it came off the wire) counts as unset
])
def test_the_policy_decides_for_jobs_that_did_not_ask(mode: str, src: str, dst: str, want: bool) -> None:
    assert plane(mode).encrypt(src, dst, requested=False).encrypt is want
    assert plane(mode).encrypt(src, dst, requested=True).encrypt  # --encrypt always wins


def test_link_overrides_win_most_specific_first() -> None:
    p = plane("cross-site", ("a1>b1:never", "*>b1:always", "a2>*:never", "*>*:always"))
    assert not p.encrypt("a1", "b1", False).encrypt
    assert p.encrypt("a2", "b1", False).encrypt is False  # SRC>* before *>DST
    assert p.encrypt("x", "b1", False).encrypt
    assert p.encrypt("a1", "a2", False).encrypt  # *>* beats the cross-site default
    assert "encrypt_links a1>b1" in p.encrypt("a1", "b1", False).why
    assert p.encrypt("a1", "b1", True).encrypt  # the job's --encrypt beats a "never" override


def test_bad_link_overrides_and_modes_are_refused() -> None:
    for bad in ("a1>b1", "a1-b1:always", "a1>b1:sometimes", "a b>c:never"):
        with pytest.raises(ConfigError, match="encrypt_links"):
            parse_encrypt_links((bad,))
    with pytest.raises(ConfigError, match="encrypt_links: a>b appears twice"):
        parse_encrypt_links(("a>b:always", "a>b:never"))
    with pytest.raises(ConfigError, match="choose never, always or cross-site"):
        ControllerConfig(listen="127.0.0.1:0", enroll_listen="127.0.0.1:0", insecure=True,
                         encrypt="sometimes").validate()


def test_a_source_may_connect_from_its_stream_its_advertised_hosts_and_its_listed_addresses() -> None:
    reg = Registry(offline_after=5.0)
    info = AgentInfo("a1", grpc_address="10.0.0.1:7421", data_address="[fd00::1]:7422",
                     source_addresses=("192.168.7.7", "not-an-ip", "10.0.0.1"))
    reg.attach(Session(info, 0.0, 0.0, peer_host="172.16.0.9"))
    reg.load("wild", AgentInfo("wild", data_address="0.0.0.0:7422"), 0.0)
    p = DataPlane(ControllerConfig(), reg)
    assert p.source_addresses("a1") == ("172.16.0.9", "10.0.0.1", "fd00::1", "192.168.7.7")
    assert p.source_addresses("wild") == ()  # a wildcard names no host
    assert p.source_addresses("nobody") == ()


def test_grpc_peer_strings() -> None:
    assert peer_host("ipv4:10.0.0.5:41234") == "10.0.0.5"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("ipv6:%5B::ffff:10.0.0.5%5D:5000") == "10.0.0.5"
    assert peer_host("unix:/tmp/sock") == ""


def test_the_edge_checks_what_agents_say_about_the_data_plane() -> None:
    from zcrepl.controller import validate
    from zcrepl.core.errors import InvalidArgument
    from zcrepl.core.types import Phase, Role, TransferReport, TransferStats

    ok = AgentInfo("a1", data_address="10.0.0.1:7422", site="dc-1", source_addresses=("10.1.0.1", "fd00::2"))
    assert validate.agent_info(ok) is ok
    for bad, why in ((AgentInfo("a1", data_address="10.0.0.1:7422", site="dc 1\n"), "a1's site"),
                     (AgentInfo("a1", data_address="10.0.0.1:7422", source_addresses=("gw.example",)),
                      "a1's source address 'gw.example' is refused: list IP addresses"),
                     (AgentInfo("a1", data_address="10.0.0.1:7422", source_addresses=("10.0.0.9",) * 17),
                      "at most 16")):
        with pytest.raises(InvalidArgument, match=why):
            validate.agent_info(bad)
    lying = TransferReport(1, 1, Role.SENDER, Phase.DONE, TransferStats(transport="tls\nforged" * 1000))
    assert validate.report(lying).stats.transport == "?"
    honest = TransferReport(1, 1, Role.SENDER, Phase.DONE, TransferStats(transport="ktls"))
    assert validate.report(honest) is honest
