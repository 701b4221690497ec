"""The container image, built here from this checkout, replicates a tree with its own daemons (slow; root).

deploy/container/build.sh builds the image (debootstrap'd Debian base, podman import, buildah bud with chroot
isolation). `podman run` is refused in this kind of sandbox (crun cannot set RLIMIT_NOFILE), so the image is
exercised the way the README describes for such places: `podman image mount` and `chroot` into its root. Each
daemon runs in a mount namespace of its own (`unshare --mount`) where /proc, /dev, /sys, a /tmp and the test's
work directory (at /mnt) are mounted into the read-only image root; the namespace and its mounts go when the
daemon exits, so nothing is left mounted on the host. TLS material comes from the image's own `zc-ctl pki`.

The controller and the destination agent run as the image's unprivileged user (uid 7420; the destination
export belongs to it), the source agent as root: the two ways the image documents for agents.

    ZC_SLOW=1 .venv/bin/pytest -q --basetemp=/tmp/pt-image tests/integration/test_image.py -s
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zchelpers import Daemon, diff_trees, make_tree, snapshot, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "container" / "build.sh"
BASE = "localhost/zcrepl-base:bookworm"
IMAGE_UID = 7420  # the Containerfile's zcrepl user
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}
# The machine running the suite is busy by nature: the load policy must not hold the job back.
RELAXED = ["--max-cpu-percent", "100", "--max-load-per-core", "1000", "--max-disk-busy-percent", "100",
           "--max-net-percent", "100", "--high-cpu-percent", "100", "--high-load-per-core", "1000",
           "--high-disk-busy-percent", "100", "--high-net-percent", "100", "--heartbeat-interval", "0.5",
           "--offline-after", "3"]
MOUNTS = ('mount --rbind /proc "$R/proc" && mount --rbind /dev "$R/dev" && mount --rbind /sys "$R/sys" && '
          'mount -t tmpfs tmpfs "$R/tmp" && mount --bind "$W" "$R/mnt" && exec chroot --userspec="$U" "$R" "$@"')


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=300)


def in_image(root: Path, work: Path, argv: list[str], uid: int = 0) -> list[str]:
    """``argv`` run inside the image root (work at /mnt) as ``uid``, in a mount namespace of its own."""
    return ["unshare", "--mount", "--propagation", "private", "--", "env", f"R={root}", f"W={work}",
            f"U={uid}:{uid}", "sh", "-c", MOUNTS, "zc-image", *argv]


def run_in_image(root: Path, work: Path, *argv: str, uid: int = 0) -> str:
    p = subprocess.run(in_image(root, work, list(argv), uid), capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, f"{' '.join(argv)} in the image exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[Path, dict[str, Any]]]:
    if os.geteuid() != 0:
        pytest.skip("the image test needs root (debootstrap, podman, chroot, mount namespaces)")
    tag = f"localhost/zcrepl-test:{os.getpid()}"
    had_base = shutil.which("podman") is not None and podman("image", "exists", BASE, check=False).returncode == 0
    started = time.monotonic()
    build = subprocess.run([str(BUILD), tag], capture_output=True, text=True, timeout=1500,
                           env={**os.environ, "PYTHON": sys.executable})
    print(f"\n[image] build.sh {tag}: exit {build.returncode} in {time.monotonic() - started:.0f} s "
          f"(base image {'reused' if had_base else 'made'})")
    print("\n".join(f"[image]   {line}" for line in build.stderr.splitlines() if line.startswith("build.sh:")))
    assert build.returncode == 0, f"build.sh failed:\n{build.stdout}\n{build.stderr}"
    try:
        inspect = json.loads(podman("image", "inspect", tag).stdout)[0]
        print(f"[image] {tag}: id {inspect['Id'][:12]}, {inspect['Size'] / 1e6:.0f} MB, "
              f"user {inspect['Config'].get('User')!r}, cmd {inspect['Config'].get('Cmd')}")
        assert inspect["Config"].get("User") == "zcrepl", "the image must run as its unprivileged user by default"
        root = Path(podman("image", "mount", tag).stdout.strip())
        try:
            yield root, inspect["Config"]
        finally:
            podman("image", "unmount", tag)
    finally:
        podman("rmi", "--force", tag, check=False)
        if not had_base:
            podman("rmi", "--force", BASE, check=False)


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def workdir(tmp_path: Path, *owned: str) -> Path:
    """The directory mounted at /mnt; ``owned`` subdirectories belong to the image's user."""
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o755)
    for d in owned:
        (work / d).mkdir()
        os.chown(work / d, IMAGE_UID, IMAGE_UID)
    return work


def test_default_command_starts_a_secure_controller(image: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    # `podman run IMAGE` as it is: the image's user, its command, the example config it ships (auto_pki). Only
    # the addresses (free ports here) and the state directory (the image root is read-only here) are moved.
    root, config = image
    work = workdir(tmp_path, "state")
    env = {"ZC_LISTEN": "127.0.0.1:0", "ZC_ENROLL_LISTEN": "127.0.0.1:0", "ZC_METRICS_LISTEN": "127.0.0.1:0",
           "ZC_HEALTH_LISTEN": "127.0.0.1:0", "ZC_STATE_DIR": "/mnt/state", "ZC_READY_FILE": "/mnt/state/ready.json"}
    argv = ["env", "-i", *(f"{k}={v}" for k, v in {**ENV, **env}.items()),
            *in_image(root, work, config["Cmd"], IMAGE_UID)]
    controller = Daemon("default", argv, work / "state" / "ready.json", tmp_path / "default.log")
    try:
        controller.start(timeout=60)
        assert serving(controller.ready["health"])
        pki = work / "state" / "pki"
        assert (pki / "ca.pem").exists() and (pki / "admin.pem").stat().st_uid == IMAGE_UID
        agents = run_in_image(root, work, "zc-ctl", "--controller", controller.ready["grpc"], "--ca",
                              "/mnt/state/pki/ca.pem", "--cert", "/mnt/state/pki/admin.pem", "--key",
                              "/mnt/state/pki/admin.key", "agents", "--json", uid=IMAGE_UID)
        assert json.loads(agents) == []
        assert controller.stop() == 0
        print(f"[image] default command {config['Cmd']} as {config['User']}: a controller with its own CA, "
              "answering zc-ctl over mutual TLS; exit 0 on SIGTERM")
    finally:
        controller.kill()


def test_image_replicates_a_tree_between_its_own_daemons(image: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, _ = image
    for tool in ("zc-controller", "zc-agent", "zc-ctl"):
        assert (root / "usr/local/bin" / tool).is_symlink(), f"{tool} missing from the image"
    work = workdir(tmp_path, "ctl", "hostB", "dst")
    (work / "hostA").mkdir()
    make_tree(work / "src", files=300)

    pki = "/mnt/pki"
    run_in_image(root, work, "zc-ctl", "pki", "init", pki)
    run_in_image(root, work, "zc-ctl", "pki", "issue", pki, "--controller", "controller")
    for name in ("hostA", "hostB"):
        run_in_image(root, work, "zc-ctl", "pki", "issue", pki, "--agent", name)
    run_in_image(root, work, "zc-ctl", "pki", "issue", pki, "--operator", "admin", "--role", "admin")
    os.chmod(work / "pki", 0o755)
    for name in ("controller", "hostB"):  # the unprivileged daemons read their own keys
        os.chown(work / "pki" / f"{name}.key", IMAGE_UID, IMAGE_UID)

    def tls(name: str) -> list[str]:
        return ["--ca", f"{pki}/ca.pem", "--cert", f"{pki}/{name}.pem", "--key", f"{pki}/{name}.key"]

    def daemon(name: str, argv: list[str], uid: int, ready: str) -> Daemon:
        d = Daemon(name, in_image(root, work, argv, uid), work / ready, tmp_path / f"{name}.log")
        d.argv = ["env", "-i", *(f"{k}={v}" for k, v in ENV.items()), *d.argv]
        return d

    controller = daemon("controller", [
        "zc-controller", "--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--state-dir", "/mnt/ctl",
        "--health-listen", "127.0.0.1:0", "--ready-file", "/mnt/ctl/ready.json", *tls("controller"), *RELAXED],
        IMAGE_UID, "ctl/ready.json")
    daemons = [controller]
    try:
        controller.start(timeout=60)
        address = controller.ready["grpc"]
        for name, uid, export in (("hostA", 0, "/mnt/src"), ("hostB", IMAGE_UID, "/mnt/dst")):
            agent = daemon(name, [
                "zc-agent", "--name", name, "--controller", address, "--export", export,
                "--listen", "127.0.0.1:0", "--data-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
                "--state-dir", f"/mnt/{name}", "--ready-file", f"/mnt/{name}/ready.json", *tls(name)],
                uid, f"{name}/ready.json")
            daemons.append(agent)
            agent.start(timeout=60)
        ctl = ["zc-ctl", "--controller", address, *tls("admin")]

        def online() -> bool:
            agents = json.loads(run_in_image(root, work, *ctl, "agents", "--json"))
            return {a["name"] for a in agents if a["online"]} == {"hostA", "hostB"}

        wait_for(online, 60, interval=0.5, what="both agents of the image online")
        for d in daemons:
            assert serving(d.ready["health"]), f"{d.name}'s plaintext health port does not say SERVING"
        started = time.monotonic()
        out = run_in_image(root, work, *ctl, "replicate", "hostA:/mnt/src", "hostB:/mnt/dst", "--json")
        job = json.loads(out)
        print(f"[image] zc-ctl replicate hostA:/mnt/src hostB:/mnt/dst: {job.get('state')} in "
              f"{time.monotonic() - started:.1f} s (job {job.get('id')}, attempts {job.get('attempts')})")
        assert job.get("state") == "done", out
        src, dst = snapshot(work / "src"), snapshot(work / "dst")
        src.pop(b"."), dst.pop(b".")
        assert not diff_trees(src, dst)
        owners = {os.lstat(os.path.join(os.fsencode(work / "dst"), p)).st_uid for p in dst}
        assert owners == {IMAGE_UID}, "the unprivileged agent's files belong to its own user"
        for d in daemons[::-1]:
            assert d.stop() == 0, f"{d.name} did not stop cleanly on SIGTERM:\n{d.log()[-2000:]}"
        print(f"[image] {len(src)} entries equal; controller and agents (uids {IMAGE_UID}, 0, {IMAGE_UID}) "
              "stopped with exit 0")
    finally:
        for d in daemons:
            d.kill()
