"""A private one-machine SLURM cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd) for tests and CI.

What
    `SlurmCluster(root).start()` brings up a real SLURM 22.05 cluster on localhost with every
    piece of state (configs, spool, job state, MariaDB datadir, logs, pid files, the munge key
    and socket) under `root`, on free TCP ports, so that each pytest run has a cluster of its
    own and nothing in /etc is changed. Clients (sbatch, squeue, sacct, scancel, submitit,
    hydra-submitit-launcher) find it through SLURM_CONF, which jobs inherit. Accounting runs
    through slurmdbd + MariaDB: without it `sacct` fails and submitit cannot read a finished or
    cancelled job's state.

    The Debian packages are installed with apt when missing (root only): see PACKAGES.

By hand (from the repository root; `bash scripts/slurm_cluster.sh ...` is the same)
    python3 -m tests.slurm_cluster up [--root DIR] [--partition debug]
        # starts the daemons in the background and prints: export SLURM_CONF=DIR/etc/slurm.conf
    python3 -m tests.slurm_cluster status --root DIR     # sinfo + squeue
    python3 -m tests.slurm_cluster down --root DIR [--rm]
        # cancels every job, then stops slurmd, slurmctld, slurmdbd, mariadbd, munged (by pid)

Tests use the `slurm_cluster` fixture in tests/conftest.py instead (one cluster per session).

Facts this relies on (Debian 12, root, no systemd, daemons started by hand): munged refuses to
run as root, so it runs as the munge user; cgroup plugins fail in containers (hence
proctrack/linuxproc + task/none); a RealMemory above the real memory makes the node INVAL;
cred_expire=10 lets a requeued job start again after ~15 s instead of two minutes; connections to
slurmdbd take their munge socket from AccountingStoragePass, not AuthInfo.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
# One executable per package: a package counts as installed when its executable is found.
EXECUTABLES = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "munged": "munge",
    "slurmdbd": "slurmdbd",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
}
SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
STATE_FILE = "cluster.json"
# Stop order: compute first, then the controller, then accounting, then what it stands on.
STOP_ORDER = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")


class SlurmUnavailable(RuntimeError):
    """The cluster cannot be started here; the message says why (and the log tail)."""


def which(name: str) -> str | None:
    """An executable on PATH or in the sbin directories (root's PATH may lack /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def missing_packages() -> list[str]:
    return sorted({pkg for exe, pkg in EXECUTABLES.items() if which(exe) is None})


def install_packages(packages: list[str] | tuple[str, ...] = PACKAGES, log=print) -> None:
    """apt-get update + install (--no-install-recommends); root only. Raises SlurmUnavailable."""
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM packages missing ({', '.join(packages)}) and not root: "
                               f"install them with: apt-get install --no-install-recommends {' '.join(PACKAGES)}")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable(f"SLURM packages missing ({', '.join(packages)}) and no apt-get on this machine")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    start = time.monotonic()
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        log(f"[slurm_cluster] {' '.join(cmd)}")
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    log(f"[slurm_cluster] installed {' '.join(packages)} in {time.monotonic() - start:.0f} s")


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports that are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _mem_total_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return "(no log)"


@dataclass
class SlurmCluster:
    """One private cluster under `root` (see module doc). start() / stop(); env for clients."""

    root: Path
    partition: str = "debug"
    cluster_name: str = "star"
    pids: dict[str, int] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    _db_password: str = field(default_factory=lambda: secrets.token_hex(12), repr=False)

    # ---------------------------------------------------------------- layout
    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def slurm_conf(self) -> Path:
        return self.etc / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def mysql_socket(self) -> Path:
        return self.root / "mysql" / "mysqld.sock"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs in its environment (jobs inherit it)."""
        return {"SLURM_CONF": str(self.slurm_conf)}

    def client_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    # ---------------------------------------------------------------- commands
    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        proc = subprocess.run([which(cmd[0]) or cmd[0], *cmd[1:]], env=self.client_env(), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.log_dir / f"{name}.out", "ab")
        # A session of its own: the daemons outlive `up` (by hand) and miss the terminal's Ctrl-C.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **self.env})
        log.close()
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self._save_state()

    def _wait_for(self, what: str, ready, timeout: float, logs: tuple[str, ...]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in logs:
                pid = self.pids.get(name)
                if pid is not None and not _alive(pid):
                    raise SlurmUnavailable(f"{name} exited while waiting for {what}:\n{self._logs(name)}")
            try:
                if ready():
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.25)
        raise SlurmUnavailable(f"timed out after {timeout:.0f} s waiting for {what}:\n"
                               + "\n".join(self._logs(n) for n in logs))

    def _logs(self, name: str) -> str:
        return "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(self.log_dir.glob(f"{name}*")))

    def _save_state(self) -> None:
        state = {"root": str(self.root), "partition": self.partition, "cluster_name": self.cluster_name,
                 "pids": self.pids, "ports": self.ports, "slurm_conf": str(self.slurm_conf)}
        (self.root / STATE_FILE).write_text(json.dumps(state, indent=1) + "\n")

    @classmethod
    def load(cls, root: Path) -> SlurmCluster:
        state = json.loads((Path(root) / STATE_FILE).read_text())
        return cls(root=Path(state["root"]), partition=state["partition"], cluster_name=state["cluster_name"],
                   pids={k: int(v) for k, v in state["pids"].items()}, ports=state["ports"])

    # ---------------------------------------------------------------- start
    def start(self, timeout: float = 60) -> SlurmCluster:
        """Write the configs and start every daemon; return once the node is idle."""
        missing = [exe for exe in EXECUTABLES if which(exe) is None]
        if missing:
            raise SlurmUnavailable(f"missing executables: {', '.join(missing)} (packages: {', '.join(PACKAGES)})")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the private SLURM cluster runs its daemons as root; run as root")
        self.root = Path(self.root).absolute()
        if (self.root / STATE_FILE).exists() and any(_alive(p) for p in SlurmCluster.load(self.root).pids.values()):
            raise SlurmUnavailable(f"a cluster is already running under {self.root}; stop it first (down --root)")
        # Traversable by the munge user (pytest's own tmp dirs are 0700).
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for sub in ("etc", "log", "run", "state", "spool", "mysql"):
            (self.root / sub).mkdir(exist_ok=True)
        names = ("slurmctld", "slurmd", "slurmdbd", "mysql")
        self.ports = dict(zip(names, free_ports(len(names))))
        try:
            self._start_munge(timeout)
            self._start_mariadb(timeout)
            self._start_slurmdbd(timeout)
            self._write_slurm_conf()
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-i", "-f", str(self.slurm_conf)])
            self._wait_for("slurmctld", lambda: self.run("scontrol", "ping", check=False).returncode == 0,
                           timeout, ("slurmctld",))
            self._spawn("slurmd", [which("slurmd"), "-D", "-N", "localhost", "-f", str(self.slurm_conf)])
            self._wait_for("an idle node (sinfo)",
                           lambda: self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle",
                           timeout, ("slurmctld", "slurmd"))
            self._wait_for("accounting (sacct)", lambda: self.run("sacct", "-n", check=False).returncode == 0,
                           timeout, ("slurmctld", "slurmdbd"))
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self, timeout: float) -> None:
        import grp
        import pwd

        try:
            uid, gid = pwd.getpwnam("munge").pw_uid, grp.getgrnam("munge").gr_gid
        except KeyError:
            raise SlurmUnavailable("no `munge` user: install the munge package") from None
        d = self.root / "munge"
        d.mkdir(exist_ok=True)
        os.chown(d, uid, gid)
        os.chmod(d, 0o755)  # munged: "execute permissions for all required" on the socket dir
        key = d / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
        os.chown(key, uid, gid)
        os.chmod(key, 0o400)
        runuser = which("runuser")
        self._spawn("munged", [runuser, "-u", "munge", "--", which("munged"), "-F", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--log-file={d / 'munged.log'}",
                               f"--pid-file={d / 'munged.pid'}", f"--seed-file={d / 'munged.seed'}"])
        munge, unmunge = which("munge"), which("unmunge")

        def ready() -> bool:
            if not self.munge_socket.exists():
                return False
            enc = subprocess.run([munge, "-n", "-S", str(self.munge_socket)], capture_output=True, timeout=5)
            dec = subprocess.run([unmunge, "-S", str(self.munge_socket)], input=enc.stdout, capture_output=True,
                                 timeout=5)
            return enc.returncode == 0 and dec.returncode == 0

        self._wait_for("munged", ready, timeout, ("munged",))
        # munged's pid (runuser forks it as a child): stop it, not just runuser.
        pid_file = d / "munged.pid"
        if pid_file.exists():
            self.pids["munged"] = int(pid_file.read_text().split()[0])
            self._save_state()

    def _start_mariadb(self, timeout: float) -> None:
        datadir = self.root / "mysql" / "data"
        common = ["--no-defaults", f"--datadir={datadir}", "--user=root"]
        if not (datadir / "mysql").exists():
            proc = subprocess.run([which("mariadb-install-db"), *common, "--auth-root-authentication-method=normal",
                                   "--skip-test-db"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                raise SlurmUnavailable(f"mariadb-install-db failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
        self._spawn("mariadbd", [which("mariadbd"), *common, f"--socket={self.mysql_socket}",
                                 f"--port={self.ports['mysql']}", "--bind-address=127.0.0.1",
                                 f"--pid-file={self.root / 'run' / 'mariadbd.pid'}",
                                 f"--log-error={self.log_dir / 'mariadbd.log'}",
                                 "--skip-name-resolve", "--innodb-buffer-pool-size=32M",
                                 "--innodb-log-file-size=16M", "--skip-log-bin"])
        client = which("mariadb") or which("mysql")
        sql_base = [client, "--no-defaults", "-uroot", f"--socket={self.mysql_socket}"]
        self._wait_for("mariadbd", lambda: subprocess.run([*sql_base, "-e", "SELECT 1"], capture_output=True,
                                                           timeout=5).returncode == 0, timeout, ("mariadbd",))
        sql = "".join(f"CREATE USER IF NOT EXISTS 'slurm'@'{host}' IDENTIFIED BY '{self._db_password}';"
                      f"ALTER USER 'slurm'@'{host}' IDENTIFIED BY '{self._db_password}';"
                      f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{host}';" for host in ("localhost", "127.0.0.1"))
        proc = subprocess.run([*sql_base, "-e", sql], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SlurmUnavailable(f"creating the slurm DB user failed: {proc.stderr.strip()}")

    def _auth_info(self, extra: str = "") -> str:
        return f"socket={self.munge_socket}{extra}"

    def _start_slurmdbd(self, timeout: float) -> None:
        conf = self.etc / "slurmdbd.conf"
        # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF and wants it private.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join([
                "AuthType=auth/munge",
                f"AuthInfo={self._auth_info()}",
                "DbdHost=localhost",
                "DbdAddr=127.0.0.1",
                f"DbdPort={self.ports['slurmdbd']}",
                "SlurmUser=root",
                f"LogFile={self.log_dir / 'slurmdbd.log'}",
                f"PidFile={self.root / 'run' / 'slurmdbd.pid'}",
                "StorageType=accounting_storage/mysql",
                "StorageHost=127.0.0.1",
                f"StoragePort={self.ports['mysql']}",
                "StorageUser=slurm",
                f"StoragePass={self._db_password}",
                "StorageLoc=slurm_acct_db",
                "",
            ]))
        os.chmod(conf, 0o600)
        # sacctmgr reads slurm.conf to find slurmdbd: write it first (slurmctld starts later).
        self._write_slurm_conf()
        self._spawn("slurmdbd", [which("slurmdbd"), "-D"])
        self._wait_for("slurmdbd (sacctmgr list cluster)",
                       lambda: self.run("sacctmgr", "-n", "list", "cluster", check=False, timeout=10).returncode == 0,
                       timeout, ("slurmdbd",))

    def _write_slurm_conf(self) -> None:
        cpus = os.cpu_count() or 1
        mem = max(256, _mem_total_mib() - 1024)  # more than the real memory makes the node INVAL
        run, state = self.root / "run", self.root / "state"
        lines = [
            f"ClusterName={self.cluster_name}",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={self.ports['slurmctld']}",
            f"SlurmdPort={self.ports['slurmd']}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire=10: a requeued job may start again after 10 s (default 120).
            f"AuthInfo={self._auth_info(',cred_expire=10')}",
            f"StateSaveLocation={state}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={run / 'slurmctld.pid'}",
            f"SlurmdPidFile={run / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            # cgroup plugins fail in containers ("cgroup namespace 'freezer' not mounted").
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=localhost",
            f"AccountingStoragePort={self.ports['slurmdbd']}",
            # The munge socket for connections to slurmdbd (AuthInfo's socket is not used for them).
            f"AccountingStoragePass={self.munge_socket}",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "KillWait=5",
            "MinJobAge=600",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
        self.slurm_conf.write_text("\n".join(lines))

    # ---------------------------------------------------------------- stop
    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait until none is left (so no job step outlives slurmd)."""
        if not _alive(self.pids.get("slurmctld", -1)):
            return
        self.run("scancel", "--user", str(os.getuid()), check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.run("squeue", "-h", "-o", "%i", check=False)
            if proc.returncode != 0 or not proc.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self, timeout: float = 20) -> None:
        """Cancel all jobs, then SIGTERM each daemon by pid (slurmd, slurmctld first) and wait."""
        try:
            self.cancel_all()
        except (subprocess.SubprocessError, OSError, SlurmUnavailable):
            pass
        for name in STOP_ORDER:
            pid = self.pids.get(name)
            if pid is None:
                continue
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while _alive(pid) and time.monotonic() < deadline:
                proc = self._procs.get(name)
                if proc is not None and proc.poll() is not None:
                    break
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for proc in self._procs.values():  # reap our children (runuser for munged too)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        self.pids.clear()
        if self.root.exists():
            self._save_state()

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ensure_packages(log=print) -> None:
    """Install the Debian packages if any is missing (root + apt)."""
    missing = missing_packages()
    if missing:
        install_packages(PACKAGES, log=log)
        still = missing_packages()
        if still:
            raise SlurmUnavailable(f"still missing after apt-get install: {', '.join(still)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.slurm_cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="install the packages if missing, start the cluster, print SLURM_CONF")
    up.add_argument("--root", type=Path, default=None, help="state directory (default: a new /tmp/star-slurm-*)")
    up.add_argument("--partition", default="debug")
    for name in ("down", "status"):
        p = sub.add_parser(name)
        p.add_argument("--root", type=Path, required=True)
        if name == "down":
            p.add_argument("--rm", action="store_true", help="also delete the root directory")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "up":
            ensure_packages(log=lambda m: print(m, file=sys.stderr))
            root = args.root or Path(tempfile.mkdtemp(prefix="star-slurm-"))
            start = time.monotonic()
            cluster = SlurmCluster(root, partition=args.partition).start()
            print(f"# cluster up in {time.monotonic() - start:.1f} s; partition {cluster.partition}; "
                  f"stop: python3 -m tests.slurm_cluster down --root {cluster.root}", file=sys.stderr)
            print(f"export SLURM_CONF={cluster.slurm_conf}")
        elif args.cmd == "down":
            SlurmCluster.load(args.root).stop()
            if args.rm:
                shutil.rmtree(args.root)
        else:
            cluster = SlurmCluster.load(args.root)
            for cmd in (("sinfo",), ("squeue",)):
                print(cluster.run(*cmd, check=False).stdout, end="")
    except SlurmUnavailable as e:
        print(f"slurm_cluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
