"""A local training job's instances: one toolkit process per host, as SageMaker runs algo-1..algo-N.

Why real processes and the toolkit's own launcher: a job with
``ResourceConfig.InstanceCount`` N runs, in AWS, the same container on N hosts
named ``algo-1`` .. ``algo-N``; each reads its own ``resourceconfig.json``
(``current_host``, ``hosts``, ``network_interface_name``), and the PyTorch
training toolkit (``sagemaker_pytorch_container.training``, the image's
``SAGEMAKER_TRAINING_MODULE``) starts ``torchrun --nnodes N --node_rank R
--master_addr algo-1 --master_port 7777`` when the job has the
``sagemaker_torch_distributed_enabled`` hyperparameter. Here each host is one
toolkit process with its own ``SAGEMAKER_BASE_DIR``: ``algo-1`` keeps the job's
folder (``.breedline/jobs/<job>/``, as for one instance), ``algo-K`` gets
``hosts/algo-K/`` under it. Nothing of the rendezvous is ours.

What differs from AWS, and why:

- **Host names.** ``algo-K`` must resolve, in C (torch's TCPStore), to loopback.
  If it already does (an ``/etc/hosts`` line), nothing is done; otherwise each
  host process runs in its own mount namespace (``unshare --mount``, as root or
  in a user namespace) with a private ``/etc/hosts``: the machine's lines plus
  ``127.0.0.1 algo-1 .. algo-N``. Where neither works the job fails at once
  with a ClientError that says what to add, never a hang. Since the names
  resolve, a multi-host job runs without ``SM_STUDIO_LOCAL_MODE``: the
  toolkits' own wait for every host's name runs, as on SageMaker.
- **One multi-host job at a time.** The toolkit's master port is fixed (7777)
  and every host shares this machine's loopback, so jobs of several hosts
  queue on :data:`MASTER_PORT_LOCK` (AWS gives each job its own network); a
  one-host torchrun job gets a free port of its own (``PET_MASTER_PORT``).
- **Bounded rendezvous.** ``PET_RDZV_CONF=timeout=...`` (torchrun reads its
  ``--rdzv-conf`` from it) lowers torchrun's 600 s wait for the other hosts.
- **torchrun is this interpreter's** (a ``torchrun`` shim first on ``PATH``), so
  a venv whose console scripts point elsewhere still launches the right torch.
- **gloo on loopback** (``GLOO_SOCKET_IFNAME=lo``): CPUs only, one machine.
- ``FullyReplicated`` channels are hard links of algo-1's download (the
  scripts only read them); ``ShardedByS3Key`` with several hosts is refused.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import psutil

#: The PyTorch image's framework module (its ``SAGEMAKER_TRAINING_MODULE``): it picks torchrun.
FRAMEWORK_MODULE = "sagemaker_pytorch_container.training:main"
#: The hyperparameter that asks the framework module for torchrun (chalicelib.sagemaker_requests sends it).
TORCH_DISTRIBUTED = "sagemaker_torch_distributed_enabled"
#: How long torchrun on each host waits for the others (torch's default is 600 s).
RENDEZVOUS_TIMEOUT_SECONDS = 120
#: The network interface in every host's resourceconfig.json, as SageMaker writes it.
NETWORK_INTERFACE = "eth0"
#: The toolkit's fixed master port (sagemaker_training.torch_distributed.MASTER_PORT) is one per machine here.
MASTER_PORT_LOCK = threading.Lock()


def host_names(count: int) -> list[str]:
    """``algo-1`` .. ``algo-N``, the names SageMaker gives a job's instances."""
    return [f"algo-{index}" for index in range(1, count + 1)]


def host_roots(root: Path, hosts: list[str]) -> dict[str, Path]:
    """Each host's ``/opt/ml``: the job's folder for algo-1, ``hosts/<name>/`` under it for the others."""
    return {host: root if index == 0 else root / "hosts" / host for index, host in enumerate(hosts)}


def resource_config(host: str, hosts: list[str], instance_type: str) -> dict:
    """``input/config/resourceconfig.json`` of one host, with the fields SageMaker writes."""
    return {
        "current_host": host,
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "hosts": hosts,
        "instance_groups": [
            {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": hosts},
        ],
        "network_interface_name": NETWORK_INTERFACE,
    }


def wants_framework_module(hyper: dict[str, str], hosts: list[str]) -> bool:
    """Run the image's PyTorch framework module only where it changes the launch.

    Why not always: it imports torch in the toolkit process (seconds per job
    on this machine) and, for one host without a distribution, launches the
    script exactly as the base toolkit does.
    """
    try:
        distributed = json.loads(hyper.get(TORCH_DISTRIBUTED, "false")) is True
    except ValueError:
        distributed = False
    return distributed or len(hosts) > 1


def replicate_channels(source: Path, target: Path, input_config: dict[str, dict]) -> None:
    """Give another host the same ``input/data`` as algo-1 (hard links: the scripts only read them)."""
    for name, channel in input_config.items():
        if channel.get("S3DistributionType", "FullyReplicated") != "FullyReplicated":
            raise ValueError(f"channel {name}: {channel['S3DistributionType']} with several instances "
                             "is not supported by the local runtime (use FullyReplicated)")
        shutil.copytree(source / name, target / name, copy_function=os.link, dirs_exist_ok=True)


def merge_into(target: Path, sources: list[Path]) -> list[str]:
    """Copy other hosts' files into algo-1's folder, as SageMaker aggregates ``/opt/ml/model`` and
    ``/opt/ml/output/data`` of every host into one tarball; the names that clashed (algo-1's kept)."""
    clashes: list[str] = []
    for source in sources:
        if not source.is_dir():
            continue
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source)
            destination = target / relative
            if destination.exists():
                clashes.append(str(relative))
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    return clashes


@functools.lru_cache(maxsize=None)
def _resolves_to_loopback(host: str) -> bool:
    try:
        return socket.gethostbyname(host).startswith("127.")
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def _unshare_prefix() -> tuple[str, ...] | None:
    """The ``unshare`` command that gives a process its own mount namespace here, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return tuple(prefix) if probe.returncode == 0 else None


def host_command(command: list[str], hosts: list[str], hosts_file: Path) -> list[str]:
    """``command``, wrapped so that the host names resolve to loopback inside it.

    Raises RuntimeError (the job's ClientError) when they do not resolve and
    no private mount namespace can be made on this machine.
    """
    if len(hosts) == 1 or all(_resolves_to_loopback(host) for host in hosts):
        return command
    prefix = _unshare_prefix()
    if prefix is None:
        raise RuntimeError(
            f"the hosts {', '.join(hosts)} of a multi-instance job must resolve to 127.0.0.1, and this machine "
            "lets the runtime neither give the job a private /etc/hosts (unshare --mount) nor finds them in "
            f"/etc/hosts; add the line '127.0.0.1 {' '.join(hosts)}' to /etc/hosts"
        )
    machine = Path("/etc/hosts").read_text(encoding="utf-8") if Path("/etc/hosts").is_file() else ""
    hosts_file.write_text(machine.rstrip("\n") + f"\n127.0.0.1 {' '.join(hosts)}\n", encoding="utf-8")
    # sh: $0 is the private hosts file, "$@" the toolkit's command line; exec keeps the process id.
    return [*prefix, "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file), *command]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def distributed_environment(env: dict[str, str], bin_dir: Path, hosts: list[str]) -> dict[str, str]:
    """The additions of a distributed job's toolkit process (the module docstring says why each).

    One host: the toolkit passes torchrun no ``--master_port``, so torchrun would
    take 29500, which two such jobs at once here would share; ``PET_MASTER_PORT``
    (torchrun's default for that flag) gives each its own free port instead.
    """
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "torchrun"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    out = dict(env)
    out.update({
        "SAGEMAKER_TRAINING_MODULE": FRAMEWORK_MODULE,
        "PATH": os.pathsep.join([str(bin_dir), env.get("PATH", os.defpath)]),
        "PET_RDZV_CONF": f"timeout={RENDEZVOUS_TIMEOUT_SECONDS}",
        "GLOO_SOCKET_IFNAME": "lo",
    })
    if len(hosts) == 1:
        out["PET_MASTER_PORT"] = str(_free_port())
    else:  # the host names resolve (host_command): let the toolkit do its own wait for them
        out.pop("SM_STUDIO_LOCAL_MODE", None)
    return out


class HostProcess:
    """One host's toolkit process: its own process group, logs and output pumps.

    Why a group and a list of members: the toolkit starts torchrun, which starts
    the script in a session of its own; stopping a host must reach all three,
    as stopping an instance does, even when the toolkit process died first and
    its children were left behind. :meth:`refresh_members` records them while
    they run.
    """

    def __init__(self, host: str, command: list[str], cwd: Path, env: dict[str, str], logs: Path,
                 on_stdout: Callable[[str], None]) -> None:
        self.host = host
        self.command, self.cwd, self.env, self.logs = command, cwd, env, logs
        self.on_stdout = on_stdout
        self.popen: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.exited_at = 0.0
        self.exited = threading.Event()
        self.stderr_lines: list[str] = []
        self.members: dict[int, float] = {}  # pid -> create time, of the toolkit's descendants
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        (self.logs / "command.json").write_text(json.dumps(self.command))
        stdout_log = open(self.logs / "stdout.log", "w", encoding="utf-8")  # noqa: SIM115 - closed by the pump
        stderr_log = open(self.logs / "stderr.log", "w", encoding="utf-8")  # noqa: SIM115 - closed by the pump
        self.popen = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1, start_new_session=True,
        )
        assert self.popen.stdout is not None and self.popen.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, stdout_log, self.on_stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, stderr_log, self._keep_tail), daemon=True),
            threading.Thread(target=self._wait, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _pump(stream: IO[str], log: IO[str], handle: Callable[[str], None]) -> None:
        with log:
            for line in stream:
                log.write(line)
                log.flush()
                handle(line)

    def _keep_tail(self, line: str) -> None:
        if line.strip():
            self.stderr_lines.append(line.rstrip())
            del self.stderr_lines[:-50]

    def _wait(self) -> None:
        assert self.popen is not None
        code = self.popen.wait()
        for thread in self._threads[:2]:  # the last lines are read before the exit is seen
            thread.join(timeout=5)
        self.returncode, self.exited_at = code, time.monotonic()
        self.exited.set()

    def refresh_members(self) -> None:
        """Remember the toolkit's descendants (torchrun, the script) while the toolkit lives."""
        if self.popen is None or self.exited.is_set():
            return
        try:
            for child in psutil.Process(self.popen.pid).children(recursive=True):
                self.members.setdefault(child.pid, child.create_time())
        except psutil.Error:
            pass

    def alive_members(self) -> list[psutil.Process]:
        alive = []
        for pid, created in self.members.items():
            try:
                process = psutil.Process(pid)
                if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.Error:
                continue
        return alive

    def signal(self, sig: int) -> None:
        """``sig`` to the toolkit's process group and to every remembered descendant still alive."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for process in self.alive_members():
            try:
                process.send_signal(sig)
            except psutil.Error:
                continue


def stop_all(processes: list[HostProcess], grace: float = 10.0) -> None:
    """SIGTERM every host's process group, SIGKILL what is left after ``grace`` seconds."""
    for process in processes:
        process.refresh_members()
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        process.exited.wait(max(0.0, deadline - time.monotonic()))
        leftovers = process.alive_members()
        psutil.wait_procs(leftovers, timeout=max(0.0, deadline - time.monotonic()))
        process.signal(signal.SIGKILL)
    for process in processes:
        process.exited.wait(5)


def supervise(processes: list[HostProcess], poll: float = 0.2) -> HostProcess | None:
    """Wait for every host; None when all exited 0, else the failed host, the others stopped.

    Why stop the others: a host that died leaves the rest blocked in a
    collective until a timeout; SageMaker fails the whole job on the first
    failed host, and so does this. A host killed by a signal is the cause
    before the hosts whose collectives then failed.
    """
    polls = 0
    while True:
        if polls % 5 == 0:  # a /proc walk each second, not each poll
            for process in processes:
                process.refresh_members()
        polls += 1
        failed = [p for p in processes if p.exited.is_set() and p.returncode != 0]
        if failed:
            first = min(failed, key=lambda p: (p.returncode is not None and p.returncode >= 0, p.exited_at))
            stop_all([p for p in processes if p is not first] + [first])
            return first
        if all(p.exited.is_set() for p in processes):
            return None
        time.sleep(poll)


def failure_reason(process: HostProcess, failure_file: Path, hosts: list[str]) -> str:
    """What a failed host says: its failure file, its fatal signal, or its last stderr line."""
    code = process.returncode if process.returncode is not None else -1
    reason = failure_file.read_text().strip() if failure_file.is_file() else ""
    if not reason and code < 0:
        reason = f"the process was killed by {signal.Signals(-code).name}"
    reason = reason or (process.stderr_lines[-1] if process.stderr_lines else "") or f"exit code {code}"
    where = f"{process.host} (of {len(hosts)} hosts; the others were stopped): " if len(hosts) > 1 else ""
    return f"AlgorithmError: {where}{reason[-1000:]}, exit code: {code}"
