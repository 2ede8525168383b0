"""Issue 18: a job with InstanceCount 2 runs as two real hosts through the toolkit's torch_distributed launcher.

The probe is not train.py: it joins the process group torchrun set up (gloo),
all-reduces its rank and writes what it saw into its host's model dir. Only
the toolkit and torchrun set ``SM_CURRENT_HOST``, ``WORLD_SIZE``, ``RANK``,
``GROUP_RANK`` and ``MASTER_ADDR``, so their values prove the launch is theirs.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
import textwrap
import time

import psutil
import pytest
from local_standins import BUCKET, sagemaker_client, training_request  # type: ignore[import-not-found]
from test_training_toolkit import upload_source, wait_ended  # type: ignore[import-not-found]

from breedline.local import training_hosts

PROBE = textwrap.dedent('''
    """All-reduce the ranks over gloo, write what this host saw; --hang_on_rank keeps that rank waiting."""
    import json, os, pathlib, sys, time
    import torch, torch.distributed as dist
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    if args.get("--hang_on_rank") == os.environ["RANK"]:
        (pathlib.Path(os.environ["SM_MODEL_DIR"]) / "hanging").write_text(str(os.getpid()))
        time.sleep(600)
    dist.init_process_group("gloo")
    total = torch.tensor([float(dist.get_rank())])
    dist.all_reduce(total)
    keys = ("SM_CURRENT_HOST", "SM_HOSTS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR",
            "MASTER_PORT", "SM_NETWORK_INTERFACE_NAME")
    seen = {"env": {k: os.environ.get(k) for k in keys}, "sum": total.item(), "world": dist.get_world_size()}
    name = f"seen-{os.environ['SM_CURRENT_HOST']}.json"
    (pathlib.Path(os.environ["SM_MODEL_DIR"]) / name).write_text(json.dumps(seen))
    if dist.get_rank() == 0:
        print("#breedline-metric epoch=1 valid_loss=0.5", flush=True)
    dist.destroy_process_group()
''')


def distributed_request(name: str, source: str, **hyper: str) -> dict:
    request = training_request(name, sagemaker_submit_directory=json.dumps(source),
                               sagemaker_torch_distributed_enabled="true", **hyper)
    request["ResourceConfig"]["InstanceCount"] = 2
    return request


@pytest.mark.e2e  # two hosts, each importing torch three times (toolkit, torchrun, script): ~45 s here
def test_two_hosts_rendezvous_through_torchrun_and_upload_one_model(local_sagemaker):
    s3 = local_sagemaker.backend.s3
    source = upload_source(s3, {"train.py": PROBE})
    sm = sagemaker_client(local_sagemaker)
    sm.create_training_job(**distributed_request("hosts-probe-1", source))
    job = wait_ended(sm, "hosts-probe-1")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    root = local_sagemaker.backend.state_dir / "jobs" / "hosts-probe-1"
    # Each host has its own /opt/ml and resourceconfig.json, as on two instances.
    for host, base in (("algo-1", root), ("algo-2", root / "hosts" / "algo-2")):
        config = json.loads((base / "input" / "config" / "resourceconfig.json").read_text())
        assert (config["current_host"], config["hosts"]) == (host, ["algo-1", "algo-2"])
        assert sorted(p.name for p in (base / "input" / "data" / "train").iterdir()) == ["a", "b"]
    # torchrun's environment on both ranks; the all-reduce of ranks 0 + 1 saw both.
    seen = {}
    for host in ("algo-1", "algo-2"):
        base = root if host == "algo-1" else root / "hosts" / host
        seen[host] = json.loads((base / "model" / f"seen-{host}.json").read_text())
    for rank, host in enumerate(("algo-1", "algo-2")):
        env = seen[host]["env"]
        assert env["SM_CURRENT_HOST"] == host and json.loads(env["SM_HOSTS"]) == ["algo-1", "algo-2"]
        assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_RANK"], env["GROUP_RANK"]) == ("2", str(rank), "0", str(rank))
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("algo-1", "7777")
        assert (seen[host]["world"], seen[host]["sum"]) == (2, 1.0)
    command = json.loads((root / "hosts" / "algo-2" / "logs" / "command.json").read_text())
    assert "sagemaker_training.cli.train" in command
    log = (root / "logs" / "stderr.log").read_text()
    assert "Invoking TorchDistributed" in log and "--nnodes 2" in log and "--node_rank 0" in log
    assert "Block until all host DNS lookups succeed" in log  # the toolkit's own wait for algo-1, algo-2
    # One model.tar.gz, with every host's files (SageMaker aggregates /opt/ml/model), one metric line.
    body = s3.get_object(Bucket=BUCKET, Key="jobs/hosts-probe-1/output/model.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert {"seen-algo-1.json", "seen-algo-2.json"} <= {os.path.basename(n) for n in tar.getnames()}
    run = local_sagemaker.backend.runners["hosts-probe-1"]
    assert run.history["valid_loss"] == [0.5]


@pytest.mark.e2e
def test_killing_one_host_fails_the_job_with_its_reason_and_stops_the_other(local_sagemaker):
    source = upload_source(local_sagemaker.backend.s3, {"train.py": PROBE})
    sm = sagemaker_client(local_sagemaker)
    sm.create_training_job(**distributed_request("hosts-kill-1", source, hang_on_rank="1"))
    root = local_sagemaker.backend.state_dir / "jobs" / "hosts-kill-1"
    marker = root / "hosts" / "algo-2" / "model" / "hanging"
    deadline = time.monotonic() + 120
    while not marker.is_file():
        assert time.monotonic() < deadline, "rank 1 never started"
        time.sleep(0.2)
    run = local_sagemaker.backend.runners["hosts-kill-1"]
    started = time.monotonic()
    os.kill(run.hosts[1].popen.pid, signal.SIGKILL)  # algo-2's toolkit process, as if its instance died
    job = wait_ended(sm, "hosts-kill-1")
    assert time.monotonic() - started < 30  # not the 120 s rendezvous bound, not a hang
    assert job["TrainingJobStatus"] == "Failed"
    reason = job["FailureReason"]
    assert reason.startswith("AlgorithmError: algo-2 (of 2 hosts; the others were stopped)"), reason
    assert "SIGKILL" in reason and reason.endswith("exit code: -9"), reason
    assert all(process.exited.is_set() for process in run.hosts)
    assert run.hosts[0].popen.poll() is not None
    # The killed host's script (torchrun gave it a session of its own) did not outlive the job.
    script = psutil.Process(int(marker.read_text())) if psutil.pid_exists(int(marker.read_text())) else None
    assert script is None or script.status() == psutil.STATUS_ZOMBIE


def test_host_layout_and_resource_config(tmp_path):
    hosts = training_hosts.host_names(3)
    assert hosts == ["algo-1", "algo-2", "algo-3"]
    roots = training_hosts.host_roots(tmp_path, hosts)
    assert roots["algo-1"] == tmp_path and roots["algo-3"] == tmp_path / "hosts" / "algo-3"
    config = training_hosts.resource_config("algo-2", hosts, "ml.m5.xlarge")
    assert config["current_host"] == "algo-2" and config["instance_groups"][0]["hosts"] == hosts
    assert training_hosts.wants_framework_module({}, hosts)
    assert not training_hosts.wants_framework_module({}, hosts[:1])
    assert training_hosts.wants_framework_module({"sagemaker_torch_distributed_enabled": "true"}, hosts[:1])


def test_the_distributed_environment_launches_this_interpreters_torchrun(tmp_path):
    import subprocess

    base = {"PATH": "/usr/bin:/bin", "SM_STUDIO_LOCAL_MODE": "true"}
    env = training_hosts.distributed_environment(base, tmp_path / "bin", ["algo-1", "algo-2"])
    assert "PET_MASTER_PORT" not in env  # several hosts: the toolkit's own --master_port 7777
    assert "SM_STUDIO_LOCAL_MODE" not in env
    alone = training_hosts.distributed_environment(base, tmp_path / "bin", ["algo-1"])
    assert 0 < int(alone["PET_MASTER_PORT"]) < 65536 and alone["SM_STUDIO_LOCAL_MODE"] == "true"
    assert env["SAGEMAKER_TRAINING_MODULE"] == "sagemaker_pytorch_container.training:main"
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path / "bin")
    assert env["PET_RDZV_CONF"] == f"timeout={training_hosts.RENDEZVOUS_TIMEOUT_SECONDS}"
    shim = (tmp_path / "bin" / "torchrun").read_text()
    assert os.access(tmp_path / "bin" / "torchrun", os.X_OK) and "-m torch.distributed.run" in shim
    done = subprocess.run(["sh", "-c", "command -v torchrun"], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(tmp_path / "bin" / "torchrun")


def test_host_names_resolve_inside_the_host_command(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-c", "import socket; print(socket.gethostbyname('algo-2'))"]
    assert training_hosts.host_command(command, ["algo-1"], tmp_path / "hosts") == command
    try:
        wrapped = training_hosts.host_command(command, ["algo-1", "algo-2"], tmp_path / "hosts")
    except RuntimeError as exc:  # no /etc/hosts line and no mount namespace here: the job's ClientError
        assert "127.0.0.1 algo-1 algo-2" in str(exc)
        return
    done = subprocess.run(wrapped, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip().startswith("127.")
    assert "algo-2" not in open("/etc/hosts").read() or wrapped == command  # the machine's file is untouched


def test_the_demo_takes_an_instance_count_for_its_final_job(monkeypatch, capsys):
    from breedline import cli

    assert cli.build_parser().parse_args(["demo", "--instances", "2"]).instances == 2
    assert cli.build_parser().parse_args(["demo"]).instances is None  # the default stays one process
    monkeypatch.delenv("BREEDLINE_TRAINING_INSTANCE_COUNT", raising=False)
    assert cli.main(["demo", "--instances", "0"]) == 2
    assert "--instances must be at least 1" in capsys.readouterr().err
    assert "BREEDLINE_TRAINING_INSTANCE_COUNT" not in os.environ


def test_the_local_service_refuses_no_instances(local_sagemaker):
    from botocore.exceptions import ClientError

    request = training_request("hosts-none-1")
    request["ResourceConfig"]["InstanceCount"] = 0  # botocore's model allows 0 (for InstanceGroups)
    with pytest.raises(ClientError, match="InstanceCount must be at least 1"):
        sagemaker_client(local_sagemaker).create_training_job(**request)
