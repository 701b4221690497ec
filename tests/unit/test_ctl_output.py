"""zc-ctl's start-up diet: the parser loads none of what the commands use, and the plain output that replaced
rich for lines and JSON prints exactly what rich printed (issue 11, item 1)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest
from rich.console import Console

from zcrepl.cli import render
from zcrepl.cli.ctl_out import Out, is_terminal
from zcrepl.cli.render_plain import plain_table
from zcrepl.core.types import AgentInfo, AgentStatus, HostHealth

HEAVY = ("grpc", "google.protobuf", "rich", "asyncio", "cryptography", "zcrepl.core.types", "zcrepl.core.config",
         "zcrepl.proto", "zcrepl.cli.client")


def _modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sys.modules), file=sys.stderr)\n"
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    return set(p.stderr.split())


def test_help_and_parsing_load_no_grpc_protobuf_rich_or_asyncio() -> None:
    loaded = _modules_after(
        "from zcrepl.cli import ctl\n"
        "ctl.build_parser().parse_args(['replicate', 'hostA:/a', 'hostB:/b', '--durability', 'none'])\n"
        "try:\n    ctl.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    ctl.main(['pki', 'issue', '--help'])\nexcept SystemExit:\n    pass")
    assert "zcrepl.cli.ctl" in loaded
    heavy = sorted(m for m in loaded if m.startswith(HEAVY))
    assert not heavy, f"the parser pulled in {heavy}"


def test_a_usage_error_loads_nothing_heavy_either() -> None:
    loaded = _modules_after(
        "from zcrepl.cli import ctl\n"
        "try:\n    ctl.main(['replicate', 'hostA:/a', 'hostB:/b', '--durability', 'fast'])\nexcept SystemExit:\n"
        "    pass")
    assert not [m for m in loaded if m.startswith(HEAVY)]


LINES = [
    "job 7 done: 1 files (3 B) copied, 0 up to date, 0 deleted, 2 entries scanned in 0.01s",
    "zc-ctl: unknown host 'hostX': run 'zc-ctl agents' [bold]not markup[/bold] [red]",
    "tabs\tinside\tand a\ttab at the end\t",
    "bell\x07 backspace\x08 vtab\x0b formfeed\x0c carriage\rreturn",
    "two\nlines\twith tabs",
    "wide 名前 and ünïcödé \\x80 escaped",
    "x" * 450,
    "trailing spaces   ",
    "hostA:/srv/:fire:/data (an emoji code in a path)",
    "",
]


def _rich_line(text: str) -> str:
    buf = io.StringIO()
    Console(file=buf, highlight=False, soft_wrap=True, width=200).print(text, markup=False)
    return buf.getvalue()


@pytest.mark.parametrize("text", LINES)
def test_a_line_is_what_rich_printed(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    Out().line(text)
    Out(stderr=True).line(text)
    got = capsys.readouterr()
    assert got.out == _rich_line(text)
    assert got.err == _rich_line(text)


def test_json_is_what_rich_printed(capsys: pytest.CaptureFixture[str]) -> None:
    doc = [{"name": "hostA", "exports": ["/srv/\\xff"], "note": "tab\there [b]x[/b] :fire:", "n": 1.5}]
    Out().json(doc)
    buf = io.StringIO()
    Console(file=buf, highlight=False, soft_wrap=True, width=200).out(json.dumps(doc, indent=2, sort_keys=True),
                                                                    highlight=False)
    assert capsys.readouterr().out == buf.getvalue()


@pytest.mark.parametrize("env", [{}, {"FORCE_COLOR": "1"}, {"FORCE_COLOR": ""}, {"TTY_COMPATIBLE": "1"},
                                 {"TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "maybe"}])
def test_terminal_detection_follows_rich(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    r, w = os.pipe()
    try:
        with os.fdopen(w, "w", closefd=False) as piped:
            assert is_terminal(piped) == Console(file=piped).is_terminal
    finally:
        os.close(r)
        os.close(w)


def _status(name: str, online: bool, exports: tuple[bytes, ...], health: bool) -> AgentStatus:
    h = HostHealth(cpu_percent=12.5, cpu_count=4, load1=1.3, mem_available=3 << 30) if health else None
    return AgentStatus(AgentInfo(name, data_address="10.0.0.7:7422", exports=exports), online=online,
                       last_seen=time.time() - 3, health=h, running_jobs=2)


AGENT_SETS = [
    [],
    [_status("hostA", True, (b"/srv/a",), True)],
    [_status("hostA", True, (b"/srv/a", b"/data/long/export/path"), True), _status("b", False, (), False),
     _status("host-with-a-long-name.example", True, (b"/x",), False)],
]


def _rich_table(renderable: object) -> str:
    buf = io.StringIO()
    Console(file=buf, highlight=False, soft_wrap=True, width=200).print(renderable)
    return buf.getvalue()


@pytest.mark.parametrize("agents", AGENT_SETS)
def test_the_plain_agents_table_is_what_rich_printed(agents: list[AgentStatus]) -> None:
    plain = plain_table("agents", render.AGENT_COLUMNS, render.agents_rows(agents), 200)
    assert plain is not None and plain == _rich_table(render.agents_table(agents))


@pytest.mark.parametrize(("title", "rows", "why"), [
    ("agents", [["/srv/名前", "x"]], "not ASCII: rich measures cells its own way"),
    ("agents", [["/srv/[old]", "x"]], "rich reads markup in a cell"),
    ("agents", [["x" * 150, "y" * 60]], "wider than the console: rich wraps"),
    ("a title longer than the whole table", [["x", "y"]], "rich lays such a title out itself"),
    ("agents", [["tab\there", "x"]], "not printable"),
])
def test_anything_rich_would_print_differently_is_left_to_rich(title: str, rows: list[list[str]], why: str) -> None:
    assert plain_table(title, ["A", "B"], rows, 200) is None, why


def test_a_table_with_no_rows_matches_too() -> None:
    from rich.table import Table

    t = Table(title="watch rules", title_justify="left")
    for col in ("ID", "STATUS"):
        t.add_column(col)
    assert plain_table("watch rules", ["ID", "STATUS"], [], 200) == _rich_table(t)
