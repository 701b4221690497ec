"""A dry run's plan for people (rsync's --itemize-changes codes, then why) and for scripts (objects)."""

from __future__ import annotations

from typing import Any

from zcrepl.core.paths import show
from zcrepl.core.types import Job, PlanItem

_TYPE = {"file": "f", "dir": "d", "symlink": "L", "hardlink": "h"}


def itemize(x: PlanItem) -> str:
    """rsync's 11-character code: ``>f+++++++++`` created, ``>f.st......`` sent for size and mtime,
    ``.f...p.....`` mode only, ``cLc........`` a new link target, ``*deleting  `` gone."""
    if x.change == "deleted":
        return "*deleting  "
    kind = _TYPE.get(x.kind, "?")
    if x.change == "created":
        return ("c" if kind in "dLh" else ">") + kind + "+" * 9
    w = set(x.why)
    first = ">" if x.size else "c" if "target" in w else "."
    flags = ["c" if w & {"content", "target"} else ".", "s" if "size" in w else ".", "t" if "mtime" in w else ".",
             "p" if "mode" in w else ".", "o" if "owner" in w else "."]
    return first + kind + "".join(flags) + "...."


def item_doc(x: PlanItem) -> dict[str, Any]:
    doc: dict[str, Any] = {"change": x.change, "kind": x.kind, "path": show(x.path), "why": list(x.why),
                           "bytes": x.size, "itemize": itemize(x)}
    if x.target:
        doc["target"] = show(x.target)
    return doc


def plan_lines(j: Job) -> list[str]:
    lines = []
    for x in j.plan:
        name = show(x.path) or "."
        name += "/" if x.kind == "dir" else f" -> {show(x.target)}" if x.target else ""
        why = f"  ({', '.join(x.why)})" if x.why else ""
        lines.append(f"{itemize(x)} {name}{why}")
    return lines


def plan_summary(j: Job) -> str:
    p = j.progress
    total = p.plan_created + p.plan_updated + p.plan_deleted
    more = f"; the first {len(j.plan)} are listed" if total > len(j.plan) else ""
    return (f"job {j.id} dry run: {p.plan_created} to create, {p.plan_updated} to update, {p.plan_deleted} to "
            f"delete; {p.plan_files} files ({p.plan_bytes:,} bytes) would be sent{more}; nothing was changed")
