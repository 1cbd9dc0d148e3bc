"""A throw-away one-node SLURM cluster on this machine, for the SLURM profile test.

Why a real cluster: the profile's failures in issue 18 (a partition that does not exist, a group job
asking for more CPUs than the node has, status polling without accounting) only show up when sbatch
and slurmctld judge the request. Everything lives in one temporary folder: a generated munge key,
munged on its own socket, slurm.conf with the node's real CPU count and memory (``slurmd -C``), no
accounting, state and spool directories, pid and log files. The daemons run as root (SlurmUser=root,
so no ``slurm`` user or system directories are needed) and are stopped by pid, never by name.

Clients (sbatch, squeue, scancel, Snakemake's plugin) find this cluster through ``SLURM_CONF``:
:meth:`SlurmCluster.env` is the environment to run them in.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")


class ClusterStartError(RuntimeError):
    """A daemon did not come up; the message carries the tail of its log."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_hardware() -> dict[str, str]:
    """``slurmd -C`` as a dict (NodeName, CPUs, RealMemory, ...): the node line of slurm.conf must
    not claim more than the machine has, or slurmd drains the node and every job pends."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    first = out.splitlines()[0]
    return dict(re.findall(r"(\w+)=(\S+)", first))


def _tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"({path} was not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class SlurmCluster:
    """One controller and one compute node on localhost, configured under ``root``."""

    root: Path
    min_job_age_s: int = 3600  # finished jobs stay in squeue (and their batch scripts readable) for the whole test run
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    def log(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    def env(self) -> dict[str, str]:
        """The environment in which SLURM clients talk to this cluster (and only this one).

        ``bin/`` first on PATH: inside a job, Snakemake's jobstep plugin removes every SLURM_*
        variable (SLURM_CONF too) before it calls ``srun``; a cluster configured in /etc/slurm does
        not notice, this one would ("Could not establish a configuration source"), so ``bin/srun``
        sets SLURM_CONF again and runs the real srun."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _write_srun_shim(self) -> None:
        real = shutil.which("srun")
        if real is None:
            raise ClusterStartError("srun is not installed (apt-get install slurm-client)")
        shim = self.root / "bin" / "srun"
        shim.parent.mkdir(parents=True, exist_ok=True)
        shim.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec "{real}" "$@"\n')
        shim.chmod(0o755)

    def write_config(self) -> dict[str, str]:
        """Munge key and slurm.conf; returns the node hardware written into the node line."""
        for sub in ("munge", "log", "state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        hw = node_hardware()
        node = hw["NodeName"]
        lines = {
            "ClusterName": "isotoxtest",
            "SlurmctldHost": f"{node}(127.0.0.1)",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "SlurmctldPort": str(_free_port()),
            "SlurmdPort": str(_free_port()),
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket}",
            "StateSaveLocation": str(self.root / "state"),
            "SlurmdSpoolDir": str(self.root / "spool"),
            "SlurmctldPidFile": str(self.root / "slurmctld.pid"),
            "SlurmdPidFile": str(self.root / "slurmd.pid"),
            "SlurmctldLogFile": str(self.log("slurmctld")),
            "SlurmdLogFile": str(self.log("slurmd")),
            "ProctrackType": "proctrack/linuxproc",  # no cgroup hierarchy needed
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",  # the case: no slurmdbd
            "JobCompType": "jobcomp/none",
            "SchedulerType": "sched/backfill",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",  # memory is a consumable: mem_mb requests are enforced
            "MinJobAge": str(self.min_job_age_s),
            "ReturnToService": "2",
            "MpiDefault": "none",
            "SlurmctldTimeout": "30",
            "SlurmdTimeout": "60",
        }
        text = "".join(f"{k}={v}\n" for k, v in lines.items())
        text += (f"NodeName={node} NodeAddr=127.0.0.1 CPUs={hw['CPUs']} Boards={hw.get('Boards', 1)} "
                 f"SocketsPerBoard={hw.get('SocketsPerBoard', 1)} CoresPerSocket={hw.get('CoresPerSocket', hw['CPUs'])} "
                 f"ThreadsPerCore={hw.get('ThreadsPerCore', 1)} RealMemory={hw['RealMemory']} State=UNKNOWN\n")
        text += "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
        self.conf.write_text(text)
        return hw

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = (self.root / "log" / f"{name}.stdout").open("wb")
        self.procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)

    def _fail(self, name: str, problem: str) -> ClusterStartError:
        stdout = self.root / "log" / f"{name}.stdout"
        return ClusterStartError(f"{name} {problem}\n--- {self.log(name)} ---\n{_tail(self.log(name))}\n--- {stdout} ---\n{_tail(stdout)}")

    def _wait(self, name: str, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                raise self._fail(name, f"exited with code {self.procs[name].returncode}")
            if ready():
                return
            time.sleep(0.5)
        raise self._fail(name, f"was not ready after {timeout_s:.0f} s")

    def _run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(cmd), capture_output=True, text=True, env=self.env(), timeout=30)

    def start(self, timeout_s: float = 60) -> None:
        """Start munged, slurmctld and slurmd in the foreground of their own sessions and wait until
        the node is idle. Raises ClusterStartError with the failing daemon's log tail."""
        for tool in ("munged", "slurmctld", "slurmd", "sbatch", "squeue"):
            if shutil.which(tool) is None:
                raise ClusterStartError(f"{tool} is not installed (apt-get install slurm-wlm munge)")
        self.write_config()
        self._write_srun_shim()
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={self.root / 'munge' / 'munge.key'}", f"--log-file={self.log('munged')}",
                               f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--seed-file={self.root / 'munge' / 'munged.seed'}"])
        self._wait("munged", self.munge_socket.exists, timeout_s)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait("slurmctld", lambda: self._run("scontrol", "ping").stdout.count("UP") > 0, timeout_s)
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", node_hardware()["NodeName"]])
        self._wait("slurmd", lambda: "idle" in self._run("sinfo", "-h", "-o", "%T").stdout, timeout_s)

    def squeue(self) -> str:
        """Every job the controller still remembers (finished ones for MinJobAge seconds)."""
        return self._run("squeue", "-h", "-t", "all", "-o", "%i|%j|%k|%T|%C|%m").stdout

    def batch_script(self, job_id: str) -> str:
        """The script sbatch stored for a job (for ``--wrap`` jobs: the wrapped command line)."""
        return self._run("scontrol", "write", "batch_script", job_id, "-").stdout

    def watch(self, interval_s: float = 5.0) -> JobWatcher:
        """Start recording every job the controller shows until ``JobWatcher.stop``."""
        watcher = JobWatcher(self, interval_s)
        watcher.start()
        return watcher

    def stop(self) -> None:
        """Stop the daemons this object started (by pid, slurmd first), then wait for them."""
        for name in reversed(DAEMONS):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name in reversed(DAEMONS):
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()


class JobWatcher(threading.Thread):
    """Polls ``squeue`` while a workflow runs and keeps, per job id, its last state, CPUs, memory and
    batch script: the record survives even if the controller forgets a finished job (MinJobAge)."""

    def __init__(self, cluster: SlurmCluster, interval_s: float) -> None:
        super().__init__(daemon=True)
        self.cluster, self.interval_s = cluster, interval_s
        self.jobs: dict[str, dict[str, str]] = {}
        self._done = threading.Event()

    def poll(self) -> None:
        keys = ("id", "name", "comment", "state", "cpus", "mem")
        for line in self.cluster.squeue().splitlines():
            if not line.strip():
                continue
            job = dict(zip(keys, line.split("|")))
            record = self.jobs.setdefault(job["id"], {})
            record.update(job)
            if not record.get("script"):
                record["script"] = self.cluster.batch_script(job["id"])

    def run(self) -> None:
        while not self._done.is_set():
            self.poll()
            self._done.wait(self.interval_s)

    def stop(self) -> list[dict[str, str]]:
        """Stop polling (after one last poll); the jobs seen, in submission order."""
        self._done.set()
        self.join(timeout=60)
        self.poll()
        return [self.jobs[k] for k in sorted(self.jobs, key=int)]
