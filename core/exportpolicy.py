"""What a peer may decide about the files it writes into one export: ownership and privileged xattrs.

Both are off by default: files a peer sends belong to the receiving agent's user, and extended attributes
in the ``security.``, ``trusted.`` and ``system.`` namespaces (file capabilities, POSIX ACLs, SELinux labels)
are neither set nor removed. An export opts in with a spec, the same in TOML, ``ZC_EXPORT_POLICY`` and
``--export-policy``::

    /srv/backup:owners=keep,uids=1000-59999,gids=1000-59999,uid_map=0>65534,allow_privileged_xattrs=yes

``owners=keep`` applies the source's uid and gid (only when the agent runs as root); ``uids``/``gids`` bound
the ids kept as they are, ``uid_map``/``gid_map`` (repeatable) translate one id to another first. An id that
is neither mapped nor in its range is not applied: that half of the ownership stays the agent's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from zcrepl.core.errors import ConfigError
from zcrepl.core.paths import canonical_abs

PRIVILEGED_XATTR_PREFIXES = (b"security.", b"trusted.", b"system.")
MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "leave unchanged" to chown
KEEP = -1  # for fchown: leave this id as it is
_FORM = ("PATH:owners=keep|none,uids=LO-HI,gids=LO-HI,uid_map=SRC>DST,gid_map=SRC>DST,"
         "allow_privileged_xattrs=yes|no")
_BOOLS = {"yes": True, "true": True, "1": True, "on": True, "no": False, "false": False, "0": False, "off": False}


@dataclass(frozen=True)
class IdRule:
    """How one kind of id (uid or gid) from a peer becomes an id here."""

    low: int = 0
    high: int = MAX_ID
    mapping: tuple[tuple[int, int], ...] = ()

    def apply(self, peer_id: int) -> int:
        for src, dst in self.mapping:
            if src == peer_id:
                return dst
        return peer_id if self.low <= peer_id <= self.high else KEEP


@dataclass(frozen=True)
class ExportPolicy:
    owners: bool = False
    uids: IdRule = IdRule()
    gids: IdRule = IdRule()
    allow_privileged_xattrs: bool = False

    def owner(self, uid: int, gid: int, as_root: bool) -> tuple[int, int]:
        """(uid, gid) to set for a peer's (uid, gid); ``KEEP`` where nothing may be set."""
        if not (self.owners and as_root):
            return KEEP, KEEP
        return self.uids.apply(uid), self.gids.apply(gid)

    def xattr_allowed(self, name: bytes) -> bool:
        return self.allow_privileged_xattrs or not name.startswith(PRIVILEGED_XATTR_PREFIXES)


DEFAULT_POLICY = ExportPolicy()


def parse_export_policies(specs: Iterable[str], exports: Iterable[bytes]) -> dict[bytes, ExportPolicy]:
    """``export_policy`` specs -> {export path: policy}; every path must be one of ``exports`` exactly."""
    known = set(exports)
    out: dict[bytes, ExportPolicy] = {}
    for spec in specs:
        path_s, sep, tail = spec.strip().rpartition(":")
        if not sep or not path_s or not tail:
            raise ConfigError(f"export_policy {spec!r}: write {_FORM}")
        path = _canonical(path_s)
        if path not in known:
            listed = ", ".join(sorted(p.decode(errors="replace") for p in known)) or "none"
            raise ConfigError(f"export_policy {spec!r}: {path_s} is not an export of this agent ({listed}); "
                              "name an export exactly as configured")
        if path in out:
            raise ConfigError(f"export_policy: {path_s} appears twice; put all its keys in one spec")
        out[path] = _parse_one(spec, tail)
    return out


def _parse_one(spec: str, tail: str) -> ExportPolicy:
    seen: dict[str, str] = {}
    maps: dict[str, list[tuple[int, int]]] = {"uid_map": [], "gid_map": []}
    for item in tail.split(","):
        key, eq, value = (x.strip() for x in item.partition("="))
        if not eq or not value:
            raise ConfigError(f"export_policy {spec!r}: {item.strip()!r} is not KEY=VALUE; write {_FORM}")
        if key in maps:
            maps[key].append(_pair(spec, key, value))
            continue
        if key not in ("owners", "uids", "gids", "allow_privileged_xattrs"):
            raise ConfigError(f"export_policy {spec!r}: unknown key {key!r} (known: owners, uids, gids, uid_map, "
                              "gid_map, allow_privileged_xattrs)")
        if key in seen:
            raise ConfigError(f"export_policy {spec!r}: {key} given twice")
        seen[key] = value
    owners = seen.get("owners", "none")
    if owners not in ("keep", "none"):
        raise ConfigError(f"export_policy {spec!r}: owners={owners}: choose keep (the source's ids, within uids/gids "
                          "and the maps) or none (files belong to the agent's user)")
    keep = owners == "keep"
    if not keep and ({"uids", "gids"} & set(seen) or maps["uid_map"] or maps["gid_map"]):
        raise ConfigError(f"export_policy {spec!r}: uids, gids and the maps apply only with owners=keep")
    priv = seen.get("allow_privileged_xattrs", "no").lower()
    if priv not in _BOOLS:
        raise ConfigError(f"export_policy {spec!r}: allow_privileged_xattrs={priv}: choose yes or no")
    return ExportPolicy(
        owners=keep,
        uids=IdRule(*_range(spec, "uids", seen.get("uids")), _unique(spec, "uid_map", maps["uid_map"])),
        gids=IdRule(*_range(spec, "gids", seen.get("gids")), _unique(spec, "gid_map", maps["gid_map"])),
        allow_privileged_xattrs=_BOOLS[priv],
    )


def _id(spec: str, key: str, text: str) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) > MAX_ID:
        raise ConfigError(f"export_policy {spec!r}: {key}: {text!r} is not an id from 0 to {MAX_ID}")
    return int(text)


def _range(spec: str, key: str, value: str | None) -> tuple[int, int]:
    if value is None:
        return 0, MAX_ID
    lo, dash, hi = value.partition("-")
    low, high = _id(spec, key, lo), _id(spec, key, hi if dash else lo)
    if low > high:
        raise ConfigError(f"export_policy {spec!r}: {key}={value}: the range's low end is above its high end")
    return low, high


def _pair(spec: str, key: str, value: str) -> tuple[int, int]:
    src, gt, dst = value.partition(">")
    if not gt:
        raise ConfigError(f"export_policy {spec!r}: {key}={value}: write SRC>DST (for example 0>65534)")
    return _id(spec, key, src), _id(spec, key, dst)


def _unique(spec: str, key: str, pairs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    sources = [s for s, _ in pairs]
    if len(set(sources)) != len(sources):
        raise ConfigError(f"export_policy {spec!r}: {key} maps the same id twice")
    return tuple(pairs)


def _canonical(path: str) -> bytes:
    return canonical_abs(os.fsencode(os.path.abspath(path)))


def table_specs(table: Mapping[str, object]) -> tuple[str, ...]:
    """A TOML table of tables (``[export_policy."/srv/x"] owners = "keep"``) as specs: lists become
    repeated keys, booleans yes/no."""
    out = []
    for name, keys in table.items():
        if not isinstance(keys, Mapping):
            raise ConfigError(f"{name!r}: expected a table of KEY = VALUE")
        items = []
        for key, value in keys.items():
            for v in value if isinstance(value, list) else [value]:
                items.append(f"{key}={('yes' if v else 'no') if isinstance(v, bool) else v}")
        out.append(f"{name}:{','.join(items)}")
    return tuple(out)
