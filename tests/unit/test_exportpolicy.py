"""The per-export policy: one spec form for TOML, ZC_* and flags, validated at start with one sentence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zcrepl.agent.main import build_parser
from zcrepl.core.config import AgentConfig, load_config
from zcrepl.core.errors import ConfigError
from zcrepl.core.exportpolicy import KEEP, MAX_ID, ExportPolicy, IdRule, parse_export_policies


@pytest.fixture
def exports(tmp_path: Path) -> tuple[bytes, bytes]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b b,c").mkdir()
    return os.fsencode(tmp_path / "a"), os.fsencode(tmp_path / "b b,c")


def test_default_is_nothing_for_the_peer() -> None:
    p = ExportPolicy()
    assert p.owner(1234, 5678, as_root=True) == (KEEP, KEEP)
    for name in (b"security.capability", b"trusted.x", b"system.posix_acl_access", b"system.posix_acl_default",
                 b"security.selinux"):
        assert not p.xattr_allowed(name)
    assert p.xattr_allowed(b"user.mime_type")


def test_a_full_spec(exports: tuple[bytes, bytes]) -> None:
    a, b = exports
    spec = (f"{os.fsdecode(b)}:owners=keep,uids=1000-1999,gids=100,uid_map=0>65534,uid_map=33>1033,"
            "gid_map=5678>6000,allow_privileged_xattrs=yes")
    got = parse_export_policies([spec], [a, b])
    assert set(got) == {b}  # a path with a space and a comma is fine: the keys start after the last ':'
    p = got[b]
    assert p.owner(1234, 100, as_root=True) == (1234, 100)
    assert p.owner(0, 5678, as_root=True) == (65534, 6000)  # maps come first
    assert p.owner(33, 7, as_root=True) == (1033, KEEP)  # 7 is outside gids: the agent's group stays
    assert p.owner(2000, 100, as_root=False) == (KEEP, KEEP)  # only root can give files away
    assert p.xattr_allowed(b"security.capability")
    assert IdRule().apply(MAX_ID) == MAX_ID


@pytest.mark.parametrize("tail,needle", [
    ("owners=maybe", "choose keep"),
    ("uids=1000-2000", "only with owners=keep"),
    ("owners=keep,uids=2000-1000", "low end is above"),
    ("owners=keep,uids=-5", "not an id"),
    ("owners=keep,uid_map=0", "SRC>DST"),
    ("owners=keep,uid_map=0>1,uid_map=0>2", "same id twice"),
    ("owners=keep,owners=none", "given twice"),
    ("color=blue", "unknown key 'color'"),
    ("allow_privileged_xattrs=perhaps", "choose yes or no"),
    ("owners", "not KEY=VALUE"),
])
def test_bad_specs_are_one_sentence(exports: tuple[bytes, bytes], tail: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_export_policies([f"{os.fsdecode(exports[0])}:{tail}"], exports)


def test_the_path_must_be_an_export(exports: tuple[bytes, bytes], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an export of this agent"):
        parse_export_policies([f"{tmp_path}/elsewhere:owners=keep"], exports)
    with pytest.raises(ConfigError, match="appears twice"):
        parse_export_policies([f"{os.fsdecode(exports[0])}:owners=keep",
                               f"{os.fsdecode(exports[0])}/:allow_privileged_xattrs=yes"], exports)


def test_toml_table_env_and_flags_read_the_same(exports: tuple[bytes, bytes], tmp_path: Path) -> None:
    a = os.fsdecode(exports[0])
    toml = tmp_path / "agent.toml"
    toml.write_text(f'exports = ["{a}"]\n[export_policy."{a}"]\nowners = "keep"\nuids = "1000-1999"\n'
                    'uid_map = ["0>65534", "33>1033"]\nallow_privileged_xattrs = true\n')
    from_toml = load_config(AgentConfig, str(toml), environ={})
    spec = f"{a}:owners=keep,uids=1000-1999,uid_map=0>65534,uid_map=33>1033,allow_privileged_xattrs=yes"
    assert from_toml.export_policy == (spec,)
    from_env = load_config(AgentConfig, None, {"exports": [a]}, environ={"ZC_EXPORT_POLICY": spec})
    args = build_parser().parse_args(["--export", a, "--export-policy", spec])
    from_flags = load_config(AgentConfig, None, {"exports": args.exports, "export_policy": args.export_policy},
                             environ={})
    assert from_env.export_policy == from_flags.export_policy == (spec,)
    with pytest.raises(ConfigError, match="owners=keep"):
        load_config(AgentConfig, None, {"exports": [a]}, environ={"ZC_EXPORT_POLICY": f"{a}:uids=1-2"})


@pytest.mark.parametrize("key,value", [("max_pending", "0"), ("max_manifest_entries", "0"),
                                       ("free_margin_bytes", "-1"), ("handshake_timeout", "0")])
def test_budgets_are_checked_at_start(exports: tuple[bytes, bytes], key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(AgentConfig, None, {"exports": [os.fsdecode(exports[0])]}, environ={f"ZC_{key.upper()}": value})
