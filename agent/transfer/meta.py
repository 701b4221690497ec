"""Metadata that travels besides bytes and modes: ownership and extended attributes.

What of it a peer may decide is the receiving export's policy (``zcrepl.core.exportpolicy``): by default no
ownership, and no attribute in the privileged namespaces (a ``security.capability`` from a peer would be as
good as a setuid bit, which is stripped too).
"""

from __future__ import annotations

import contextlib
import errno
import os

from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.frame import Entry
from zcrepl.core.exportpolicy import KEEP, ExportPolicy

# Who a file we create belongs to: a fresh temp needs no chown when the source owner is us. (A
# setgid parent directory would give it that directory's group; rare enough to leave to the next run.)
_ME = (os.geteuid(), os.getegid())


def owner_ids(policy: ExportPolicy, e: Entry, st: os.stat_result | None, as_root: bool) -> tuple[int, int]:
    """(uid, gid) to set on a file that has ``st`` (None: one we just created); ``KEEP`` where nothing changes."""
    uid, gid = policy.owner(e.uid, e.gid, as_root)
    cur_uid, cur_gid = (st.st_uid, st.st_gid) if st is not None else _ME
    return (KEEP if uid == cur_uid else uid), (KEEP if gid == cur_gid else gid)


def apply_meta(fd: int, e: Entry, st: os.stat_result | None = None, *, policy: ExportPolicy, as_root: bool,
               xattrs: bool) -> None:
    """Ownership (as the export's policy allows, and only as root) and extended attributes (only with
    ``xattrs``; privileged ones only where the policy allows them) onto an open fd. Attributes the source
    lacks are removed, except privileged ones the peer may not decide about: those are the destination's own
    (an SELinux label, say)."""
    uid, gid = owner_ids(policy, e, st, as_root)
    if (uid, gid) != (KEEP, KEEP):
        os.fchown(fd, uid, gid)
    if not xattrs:
        return
    wanted = {k: v for k, v in fr.decode_xattrs(e.xattrs) if policy.xattr_allowed(k)}
    for name in os.listxattr(fd):
        bkey = os.fsencode(name)
        if bkey not in wanted and policy.xattr_allowed(bkey):
            with contextlib.suppress(OSError):
                os.removexattr(fd, bkey)
    for key, value in wanted.items():
        try:
            if os.getxattr(fd, key) == value:
                continue
        except OSError:
            pass
        try:
            os.setxattr(fd, key, value)
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP):  # e.g. trusted.* as non-root
                raise


def xattrs_match(fd: int, e: Entry, policy: ExportPolicy) -> bool:
    """Whether the attributes the peer may decide about are already exactly the entry's."""
    wanted = {k: v for k, v in fr.decode_xattrs(e.xattrs) if policy.xattr_allowed(k)}
    have = [os.fsencode(n) for n in os.listxattr(fd)]
    if {k for k in have if policy.xattr_allowed(k)} != set(wanted):
        return False
    return all(os.getxattr(fd, k) == v for k, v in wanted.items())
