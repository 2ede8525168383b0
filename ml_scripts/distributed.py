"""Data-parallel training across processes: who this process is, the process group, the collectives.

A job trains on several processes when a launcher starts ``train.py`` once per
process: SageMaker's ``torch_distributed`` runner (sagemaker-training's
``TorchDistributedRunner``) runs ``torchrun --nnodes <hosts> --nproc_per_node
<GPUs, or 1 on a CPU instance>``, adding ``--master_addr <first host>
--master_port 7777 --node_rank <index of SM_CURRENT_HOST in SM_HOSTS>`` when
there are several hosts. torchrun then sets, in every process, ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``: that is all this
module reads (plus ``SM_HOSTS`` / ``SM_CURRENT_HOST`` for the log). Without
``WORLD_SIZE`` (or with 1) nothing here does anything, and a job trains exactly
as a single process always has.

The rules train.py keeps under DDP (docs/scale.md says why each):

- the train split is sharded by :func:`train_sampler` (``DistributedSampler``,
  reshuffled per epoch by ``set_epoch``); the valid split by :class:`ShardSampler`
  (no padding, so no image counts twice) and its counts and sums, confusion
  matrix included, are added up by :func:`sum_across`;
- rank 0 alone (:attr:`Cluster.is_main`) prints metric lines and writes the
  model, checkpoints and reports; the test pass and everything fitted after it
  (temperature, abstention) run on rank 0 over the whole split;
- rank 0's decisions (early stopping, where a resumed job starts) reach every
  rank by :func:`broadcast`;
- the learning rate follows :func:`scaled_learning_rate` (the linear scaling rule).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

#: How long a rank waits in a collective before the job fails. Rank 0 runs the test pass,
#: calibration and abstention alone after training while the others have left the group,
#: so this only bounds a hung peer (a killed process fails the job sooner: torchrun stops the rest).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Cluster:
    """This process's place among the processes that train together (torchrun's variables)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    #: ``SM_HOSTS`` and ``SM_CURRENT_HOST`` (empty outside SageMaker and the local runtime).
    hosts: tuple[str, ...] = ()
    current_host: str = ""
    #: ``nccl`` on GPUs, ``gloo`` on CPUs; None when the job runs on one process.
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints metric lines and writes files."""
        return self.rank == 0


def _int(env: dict[str, str] | os._Environ, name: str, default: int) -> int:
    value = (env.get(name) or "").strip()
    return int(value) if value else default


def from_environment(env: dict[str, str] | os._Environ | None = None) -> Cluster:
    """The cluster torchrun describes in ``env`` (default ``os.environ``), without starting anything."""
    import json

    env = os.environ if env is None else env
    world_size = max(1, _int(env, "WORLD_SIZE", 1))
    rank = _int(env, "RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    hosts = tuple(json.loads(env.get("SM_HOSTS") or "[]"))
    return Cluster(world_size, rank, _int(env, "LOCAL_RANK", 0), hosts, env.get("SM_CURRENT_HOST") or "")


def backend_for(cuda: bool) -> str:
    """NCCL between GPUs (it reduces in GPU memory, over NVLink/EFA); gloo between CPU processes."""
    return "nccl" if cuda else "gloo"


def start(cuda: bool) -> Cluster:
    """Join the process group when torchrun started several processes; announce it once (rank 0)."""
    cluster = from_environment()
    if not cluster.distributed:
        return cluster
    backend = backend_for(cuda)
    if cuda:
        torch.cuda.set_device(cluster.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    cluster = Cluster(cluster.world_size, cluster.rank, cluster.local_rank, cluster.hosts,
                      cluster.current_host, backend)
    if cluster.is_main:
        hosts = f" hosts={len(cluster.hosts)}" if cluster.hosts else ""
        print(f"distributed: world_size={cluster.world_size} backend={backend}{hosts}", flush=True)
    return cluster


def stop() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device(cluster: Cluster, cuda: bool) -> torch.device:
    """This process's device: its own GPU (``LOCAL_RANK``) under DDP, else ``cuda`` or the CPU."""
    if not cuda:
        return torch.device("cpu")
    return torch.device("cuda", cluster.local_rank) if cluster.distributed else torch.device("cuda")


def _collective_device(cluster: Cluster) -> torch.device:
    """NCCL reduces tensors on the GPU only; gloo on the CPU."""
    return torch.device("cuda", cluster.local_rank) if cluster.backend == "nccl" else torch.device("cpu")


def sum_across(cluster: Cluster, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """The element-wise sum of ``values`` over every rank (float64, so counts stay exact below 2**53)."""
    array = np.asarray(values, dtype=np.float64)
    if not cluster.distributed:
        return array
    tensor = torch.from_numpy(array.copy()).to(_collective_device(cluster))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def broadcast(cluster: Cluster, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object): one decision for all."""
    if not cluster.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device(cluster))
    return box[0]


def barrier(cluster: Cluster) -> None:
    if cluster.distributed:
        dist.barrier()


class ShardSampler(torch.utils.data.Sampler[int]):
    """Every ``world_size``-th index from ``rank``, in order, without padding: evaluation shards.

    Why not ``DistributedSampler(shuffle=False)``: it repeats images to give every
    rank the same count, and a repeated image would count twice in a summed accuracy.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_sampler(cluster: Cluster, dataset: torch.utils.data.Dataset, seed: int) -> Any:
    """``DistributedSampler`` over the train split (None on one process: the loader shuffles as before).

    It pads the last shard with repeated images so every rank runs the same
    number of steps (DDP's gradient all-reduce needs each rank at every step).
    """
    if not cluster.distributed:
        return None
    return torch.utils.data.distributed.DistributedSampler(
        dataset, num_replicas=cluster.world_size, rank=cluster.rank, shuffle=True, seed=seed
    )


def eval_sampler(cluster: Cluster, dataset: torch.utils.data.Dataset) -> ShardSampler | None:
    return ShardSampler(len(dataset), cluster.rank, cluster.world_size) if cluster.distributed else None


def scaled_learning_rate(learning_rate: float, batch_size: int, world_size: int,
                         reference_batch: int | None) -> float:
    """The linear scaling rule (Goyal et al. 2017): the rate grows with the global batch.

    ``lr = learning_rate * (batch_size * world_size) / reference_batch``, where
    ``batch_size`` is per process and ``reference_batch`` is the batch the rate
    was tuned at (``--lr_reference_batch``; default ``batch_size``, the tuning
    trials' batch on one process). So one process with the default is unchanged,
    and N processes with the same per-process batch get N times the rate.
    """
    reference = reference_batch or batch_size
    return learning_rate * batch_size * world_size / reference


def wrap(model: nn.Module, cluster: Cluster, cuda: bool) -> nn.Module:
    """``DistributedDataParallel(model)`` under DDP (its constructor broadcasts rank 0's weights), else ``model``."""
    if not cluster.distributed:
        return model
    ids = [cluster.local_rank] if cuda else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def uneven_steps(net: nn.Module, cluster: Cluster) -> Any:
    """DDP's ``Join`` context: a rank with fewer steps (a batch whose images were all unreadable)
    shadows the others' all-reduces instead of hanging them. A no-op on one process."""
    net = getattr(net, "_orig_mod", net)  # torch.compile's wrapper of the DDP module
    if not cluster.distributed or not isinstance(net, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    from torch.distributed.algorithms.join import Join

    return Join([net])
