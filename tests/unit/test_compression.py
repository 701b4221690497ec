"""The controller's compression decision: the pure table (controller/compression.py), its settings, the
order it puts on the wire, and the line it leaves in the job's explain history."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from enginehelpers import Harness, idle

from zcrepl.controller.compression import CompressPolicy, auto_decision
from zcrepl.controller.policy import LinkState
from zcrepl.controller.store_sql import options_from_json, options_json
from zcrepl.core.config import ControllerConfig, parse_compress_links
from zcrepl.core.errors import ConfigError
from zcrepl.core.types import AgentInfo, Compress, HostHealth, JobOptions, Phase, Role, TransferStats

MB = 1 << 20  # zc-ctl speaks binary units (core/units.py)
RATE = 200 * MB  # one core's zstd rate, as an agent measures it


def health(cores: int = 8, cpu: float = 0.0) -> HostHealth:
    return HostHealth(cpu_count=cores, cpu_percent=cpu)


# (link bytes/s, source health, destination health, streams) -> on?, and a phrase of the reason
AUTO_TABLE = [
    (0, health(), health(), 4, False, "not measured yet"),
    (6 * MB, None, health(), 4, False, "no recent health"),
    (6 * MB, health(), health(), 4, True, "far below the 800.0 MiB/s 4.0 idle cores"),  # a 50 Mbit/s link
    (6 * MB, health(), health(), 1, True, "far below the 200.0 MiB/s 1.0 idle cores"),  # one stream, one core
    (50 * MB, health(), health(), 1, False, "the link is fast (50.0 MiB/s against the 200.0 MiB/s"),
    (110 * MB, health(), health(), 2, False, "the link is fast"),  # 1 GbE, two cores: 400 MiB/s is not 4x
    (110 * MB, health(16), health(), 16, True, "far below the 3.1 GiB/s 16.0 idle cores"),
    (6 * MB, health(8, cpu=80.0), health(), 4, False, "the source is busy (80% CPU"),
    (6 * MB, health(1, cpu=50.0), health(), 4, False, "the source is busy (0.5 idle cores of 1)"),
    (6 * MB, health(), health(2, cpu=60.0), 4, False, "the destination is busy (0.8 idle cores of 2)"),
    (6 * MB, health(4, cpu=50.0), health(), 8, True, "far below the 400.0 MiB/s 2.0 idle cores"),
]


@pytest.mark.parametrize("link,src,dst,streams,on,why", AUTO_TABLE)
def test_auto_decision_table(link: float, src: HostHealth | None, dst: HostHealth | None, streams: int, on: bool,
                             why: str) -> None:
    choice = auto_decision(link, src, dst, RATE, streams)
    assert choice.on is on, choice.why
    assert why in choice.why


def test_precedence_job_off_then_agents_then_job_on_then_link_then_default() -> None:
    p = CompressPolicy("never", ("a>b:always", "a>*:auto", "*>nas:never"))
    fine = (health(), health())

    def decide(asked: Compress, src: str = "a", dst: str = "b", rates: tuple[int, int] = (RATE, RATE),
               link: float = 6 * MB) -> tuple[bool, str]:
        c = p.decide(asked, src, dst, rates, link, fine, 4)
        return c.on, c.why

    assert decide(Compress.ON, rates=(RATE, 0)) == (
        False, "not compressed: b's agent cannot compress (an older version); upgrade it to compress on this link")
    assert decide(Compress.ON, src="x") == (True, "compressed: the job asked for it (--compress)")
    assert decide(Compress.OFF) == (False, "not compressed: the job asked for none (--no-compress)")
    assert decide(Compress.OFF, rates=(0, 0)) == (False, "not compressed: the job asked for none (--no-compress)")
    assert decide(Compress.ON, dst="a") == (False, "not compressed: a copy within a crosses no network")
    assert decide(Compress.AUTO) == (True, "compressed: compress_links a>b = always")
    assert decide(Compress.AUTO, dst="c")[1].startswith("compressed: compress_links a>* = auto: the link moved")
    assert decide(Compress.AUTO, dst="c", link=0)[0] is False
    assert decide(Compress.AUTO, src="x", dst="nas") == (False, "not compressed: compress_links *>nas = never")
    assert decide(Compress.AUTO, src="x", dst="y") == (False, "not compressed: compress = never")


def test_a_slow_level_needs_a_slower_link() -> None:
    p, fine = CompressPolicy(), (health(), health())
    default = p.decide(Compress.AUTO, "a", "b", (RATE, RATE), 6 * MB, fine, 4)
    assert default.on and "far below the 800.0 MiB/s 4.0 idle cores" in default.why
    slow = p.decide(Compress.AUTO, "a", "b", (RATE, RATE), 6 * MB, fine, 4, level=19)  # 2% of level 3's speed
    assert not slow.on and "the link is fast (6.0 MiB/s against the 16.0 MiB/s" in slow.why


def test_a_compressed_link_is_judged_by_its_wire_rate() -> None:
    """After a compressed send the link's file rate is the wire rate times the ratio: judged on the file rate,
    a 25 MiB/s link compressing 4x would read 100 MiB/s, "fast", and flap off and on from send to send."""
    p = CompressPolicy()
    fine, link = (health(), health()), ("a", "b")
    one_core = p.decide(Compress.AUTO, "a", "b", (RATE, RATE), 100 * MB, fine, 1)
    assert not one_core.on and "the link is fast (100.0 MiB/s" in one_core.why
    p.ended(link, True, TransferStats(bytes_done=400 * MB, wire_bytes=100 * MB))
    again = p.decide(Compress.AUTO, "a", "b", (RATE, RATE), 100 * MB, fine, 1)
    assert again.on, again.why
    assert "the link moved 25.0 MiB/s" in again.why
    assert "100.0 MiB/s of files at the last send's 4.0x ratio" in again.why
    p.ended(link, True, TransferStats(bytes_done=1000, wire_bytes=10))  # too small to say anything
    assert p.ratios[link] == 4.0
    p.ended(link, False, TransferStats(bytes_done=400 * MB, wire_bytes=401 * MB))  # an uncompressed send
    assert p.ratios[link] == 1.0


@pytest.mark.parametrize("bad", ["a>b", "a>b:sometimes", "a:always", "a>b c:never", ">b:auto"])
def test_bad_link_settings_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="compress_links"):
        parse_compress_links((bad,))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="compress_links: a>b appears twice"):
        parse_compress_links(("a>b:auto", "a>b:never"))
    base = {"listen": "127.0.0.1:0", "enroll_listen": "127.0.0.1:0", "insecure": True}
    ControllerConfig(**base, compress="never", compress_links=("*>b:always",)).validate()
    with pytest.raises(ConfigError, match="compress 'fast': choose auto, never or always"):
        ControllerConfig(**base, compress="fast").validate()
    with pytest.raises(ConfigError, match="compress_links 'a>b:fast'"):
        ControllerConfig(**base, compress_links=("a>b:fast",)).validate()


def test_options_keep_compression_in_the_store() -> None:
    o = JobOptions(compress=Compress.OFF, compress_level=9)
    back = options_from_json(options_json(o))
    assert back == o and back.compress is Compress.OFF
    doc = json.loads(options_json(JobOptions(compress=Compress.ON)))
    del doc["compress"], doc["compress_level"]  # a row written before compression existed
    assert options_from_json(json.dumps(doc)).compress is Compress.AUTO


def test_order_and_explain_carry_the_decision(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        for name in ("hostA", "hostB", "old"):
            rate = 0 if name == "old" else RATE
            h.sessions[name] = h.engine.connect(AgentInfo(name, data_address=f"127.0.0.1:{9000 + len(h.sessions)}",
                                                          exports=(b"/srv",), compress_bps=rate), [])
            h.engine.heartbeat(h.sessions[name], idle(h.now, cores=8))
        h.engine.links.states[("hostA", "hostB")] = LinkState("hostA", "hostB", streams=2, ema_bps=6 * MB)
        slow = h.submit("hostA:/srv/a", "hostB:/srv/a", compress_level=7)
        order = h.start(slow)
        assert order.options.compress is Compress.ON and order.options.compress_level == 7
        assert any("compressed: compress = auto: the link moved 6.0 MiB/s, far below" in why
                   for _, why in h.explain(slow))
        for name, role in (("hostA", Role.SENDER), ("hostB", Role.RECEIVER)):
            h.report(name, slow, role, Phase.DONE, files_done=1, bytes_done=30 * MB, wire_bytes=10 * MB)
        assert h.engine.compression.ratios[("hostA", "hostB")] == 3.0  # the send's ratio, for the next decision
        asked = h.submit("hostA:/srv/b", "old:/srv/b", compress=Compress.ON)
        order = h.start(asked)
        assert order.options.compress is Compress.OFF  # the old agent could not take ZFILE frames
        assert ("start", "not compressed: old's agent cannot compress (an older version); upgrade it to compress "
                         "on this link") in h.explain(asked)
    finally:
        h.close()


def test_zc_ctl_spellings() -> None:
    from zcrepl.cli.ctl import build_parser

    def parse(*argv: str) -> tuple[Compress, int]:
        a = build_parser().parse_args(["replicate", "hostA:/a", "hostB:/b", *argv])
        return a.compress, a.compress_level

    assert parse() == (Compress.AUTO, 0)
    assert parse("-z") == (Compress.ON, 0)
    assert parse("--compress", "--compress-level", "19") == (Compress.ON, 19)
    assert parse("--no-compress") == (Compress.OFF, 0)
    for bad in (["-z", "--no-compress"], ["--compress-level", "20"], ["--compress-level", "0"]):
        with pytest.raises(SystemExit):
            parse(*bad)


def test_job_view_shows_wire_bytes_beside_file_bytes() -> None:
    from zcrepl.cli.render import wire_text

    assert wire_text(TransferStats(bytes_done=40_000_000, wire_bytes=9_400_000)) == (
        "9.0 MiB on the wire for 38.1 MiB of files")
    assert wire_text(TransferStats()) == ""  # nothing moved yet: no line
