"""The DDP plumbing's pure parts (ml_scripts/distributed.py and what train.py sums over ranks), in-process.

The real multi-process jobs (torchrun, gloo) are in test_distributed_jobs.py (e2e).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoints
import distributed
import evaluation
from debugging import distributed_hook_here
from job_config import build_parser, run_hyperparameters


def test_the_cluster_is_what_torchrun_says() -> None:
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "SM_HOSTS": '["algo-1", "algo-2"]',
           "SM_CURRENT_HOST": "algo-2", "MASTER_ADDR": "algo-1", "MASTER_PORT": "7777"}
    cluster = distributed.from_environment(env)
    assert (cluster.world_size, cluster.rank, cluster.local_rank) == (4, 3, 1)
    assert cluster.hosts == ("algo-1", "algo-2") and cluster.current_host == "algo-2"
    assert cluster.distributed and not cluster.is_main


def test_without_torchrun_it_is_one_process() -> None:
    cluster = distributed.from_environment({})
    assert not cluster.distributed and cluster.is_main and cluster.backend is None
    assert distributed.train_sampler(cluster, list(range(5)), seed=1) is None
    assert distributed.eval_sampler(cluster, list(range(5))) is None
    np.testing.assert_array_equal(distributed.sum_across(cluster, [1.5, 2]), [1.5, 2.0])
    assert distributed.broadcast(cluster, ("x", 1)) == ("x", 1)


def test_a_rank_outside_the_world_is_refused() -> None:
    with pytest.raises(ValueError, match="RANK=2"):
        distributed.from_environment({"WORLD_SIZE": "2", "RANK": "2"})


def test_backend_is_nccl_on_gpus_and_gloo_on_cpus() -> None:
    assert distributed.backend_for(cuda=True) == "nccl"
    assert distributed.backend_for(cuda=False) == "gloo"


@pytest.mark.parametrize("length,world", [(20, 2), (7, 3), (2, 4)])
def test_evaluation_shards_cover_every_image_exactly_once(length: int, world: int) -> None:
    shards = [list(distributed.ShardSampler(length, rank, world)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))


def test_the_train_shards_reshuffle_per_epoch_and_cover_the_split() -> None:
    data = list(range(10))
    samplers = [distributed.train_sampler(distributed.Cluster(2, rank), data, seed=5) for rank in (0, 1)]
    orders = []
    for epoch in (1, 2):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        orders.append([list(s) for s in samplers])
        assert sorted(orders[-1][0] + orders[-1][1]) == data
    assert orders[0] != orders[1]


def test_the_learning_rate_follows_the_linear_scaling_rule() -> None:
    assert distributed.scaled_learning_rate(0.003, 16, 1, None) == 0.003  # one process: unchanged
    assert distributed.scaled_learning_rate(0.003, 16, 4, None) == pytest.approx(0.012)
    # the same global batch as the tuned one (8 x 2 = 16): the tuned rate
    assert distributed.scaled_learning_rate(0.003, 8, 2, 16) == pytest.approx(0.003)
    assert "lr_reference_batch" in run_hyperparameters(build_parser().parse_args([]))


def test_shard_confusion_matrices_add_up_to_the_whole_splits_scores() -> None:
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(30, 4)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 4, size=30))
    whole = evaluation.Collector(keep_logits=False)
    whole.add(logits, labels, None)
    shards = [evaluation.Collector(keep_logits=False) for _ in range(2)]
    for rank, collector in enumerate(shards):
        collector.add(logits[rank::2], labels[rank::2], None)
    matrices = [evaluation.confusion_matrix(labels[r::2].numpy(), logits[r::2].argmax(1).numpy(), 4)
                for r in range(2)]
    summed = shards[0].result(4, add_up=lambda m: m + matrices[1])
    expected = whole.result(4)
    assert summed["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    assert summed["macro_f1"] == pytest.approx(expected["macro_f1"])
    # and a shard alone scores differently, or the test could not fail
    assert shards[0].result(4)["macro_f1"] != pytest.approx(expected["macro_f1"])


def test_a_rank_with_no_batches_still_has_a_matrix_of_the_class_count() -> None:
    empty = evaluation.Collector(keep_logits=False)
    seen = []
    empty.result(5, add_up=lambda m: seen.append(m.shape) or m)
    assert seen == [(5, 5)]


def test_metrics_from_confusion_are_classification_metrics() -> None:
    labels, predicted = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 1])
    names = ["a", "b", "c"]
    assert evaluation.metrics_from_confusion(evaluation.confusion_matrix(labels, predicted, 3), names) == \
        evaluation.classification_metrics(labels, predicted, names)


def test_ranks_other_than_0_count_epochs_but_write_nothing(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    progress = checkpoints.Progress()
    checkpoints.record_epoch(tmp_path, progress, 1, 0.5, model, optimizer, {"v": 1}, save=False)
    checkpoints.record_epoch(tmp_path, progress, 2, 0.7, model, optimizer, {"v": 1}, save=False)
    assert (progress.best_epoch, progress.bad_epochs) == (1, 1)
    assert list(tmp_path.iterdir()) == [] and progress.best_state is None


def test_a_rank_that_resumed_elsewhere_than_rank_0_fails_the_job() -> None:
    progress = checkpoints.Progress(start_epoch=3)
    checkpoints.agree(progress, (3, False))
    with pytest.raises(ValueError, match="rank 0 at 1"):
        checkpoints.agree(progress, (1, False))


def test_only_rank_0_hooks_our_own_debugger_output_smdebug_decides_for_the_service_config() -> None:
    assert distributed_hook_here(True, "in_job", False)
    assert not distributed_hook_here(False, "in_job", False)
    assert not distributed_hook_here(False, None, False)  # --debug_out: one writer
    assert distributed_hook_here(False, None, True)  # SageMaker's config: every worker, smdebug picks
    assert not distributed_hook_here(False, "off", True)


def test_a_rank_other_than_0_gets_no_in_job_hook_and_no_rules(tmp_path: Path, monkeypatch) -> None:
    from debugging import Debugger
    from job_config import Paths

    monkeypatch.setenv("SM_OUTPUT_DATA_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("SM_INPUT_CONFIG_DIR", str(tmp_path / "config"))
    args = argparse.Namespace(debugger="in_job", rules_every_epochs=1, debug_out=None, debug_save_interval=1)
    debugger = Debugger(Paths(), args, main=False)
    debugger.after_epoch(1, 3)
    debugger.close()
    assert debugger.hook is None and not (tmp_path / "out").exists()
