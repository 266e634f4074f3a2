"""Data-parallel training on CPU processes (gloo): same labels everywhere, consistent per-sample memories, rank 0
writes, and the test accuracy is that of the saved checkpoint."""
from __future__ import annotations

import json

import hydra
import pytest
import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp

from adaptive_ls.smoothing import AdaptiveSmoothing, Progress
from tests.ddp_worker import K, N, WORLD, policy_on_rank, steps
from tests.runs import TINY, compose, entry_point, one_thread


@pytest.mark.slow
def test_per_sample_memory_is_the_same_on_every_process(tmp_path):
    """Each process updates its own samples; gathering the updates keeps every memory equal to a single process's."""
    mp.spawn(policy_on_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD)
    single = AdaptiveSmoothing(ema=0.5, warmup_epochs=0)
    single.setup(N, K)
    eps = [single(logits, targets, index, Progress(0, 1, 0, 1)).eps for index, logits, targets in steps()]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for r, state in enumerate(ranks):
        assert torch.allclose(state["memory"], single.memory, atol=1e-6), r
        assert torch.equal(state["seen"], single.seen), r
        mine = torch.cat([e[r * 4:r * 4 + 4] for e in eps])
        assert torch.allclose(state["eps"], mine, atol=1e-6), r  # ε of its own samples, from the shared memory
        assert state["summed"].tolist() == [3.0, 3.0]  # _all_reduce: 1 + 2 on every process


@pytest.mark.parametrize("loader", ["device", "dataloader"])
def test_each_process_trains_on_its_own_equal_shard(loader):
    """Both loaders: disjoint equal shards per process, an order fixed by (seed, epoch) alone (so a resumed run
    sees the same batches), evaluation sets whole in every process."""
    from types import SimpleNamespace

    datamodule = hydra.utils.instantiate(compose(*TINY, f"data.loader={loader}").data)
    datamodule.setup("fit")

    def epoch_indices(rank: int, epoch: int, split: str = "train") -> list[int]:
        datamodule.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=epoch,
                                             strategy=SimpleNamespace(root_device=torch.device("cpu")))
        batches = getattr(datamodule, f"{split}_dataloader")()
        if hasattr(getattr(batches, "sampler", None), "set_epoch"):
            batches.sampler.set_epoch(epoch)  # what Lightning does at each epoch
        return torch.cat([index for _, _, index in batches]).tolist()

    shards = [epoch_indices(rank, epoch=0) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) and not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) <= set(datamodule.train_index.tolist())
    assert epoch_indices(0, epoch=0) == shards[0]  # the same epoch again (a resumed run): the same order
    assert epoch_indices(0, epoch=1) != shards[0]
    assert epoch_indices(1, epoch=0, split="test") == list(range(len(datamodule.test_labels)))


@pytest.mark.slow
def test_ddp_run_on_two_cpu_processes(tmp_path):
    settings = ("smoothing=adaptive", "smoothing.ema=0.5", "smoothing.freeze_fraction=1", "trainer.max_epochs=1",
                "smoothing.warmup_epochs=0")
    run_dir = tmp_path / "ddp"
    proc = entry_point(*settings, "trainer=ddp", "trainer.devices=2", run_dir=run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["world_size"] == 2
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran (Lightning re-ran our entry point)

    # every process made the same noisy labels
    assert results["ddp/labels_hash_per_rank"] == [results["noise/labels_hash"]] * 2

    # the memory holds both processes' samples (rank 0 alone sees half an epoch's samples)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    datamodule = hydra.utils.instantiate(compose(*TINY, *settings).data)
    datamodule.setup("fit")
    seen = checkpoint["state_dict"]["smoothing.seen"]
    assert seen[datamodule.train_index].float().mean() > 0.95 and not seen[datamodule.val_index].any()

    # the test accuracy of the run is that of its last checkpoint, evaluated by one process
    from adaptive_ls.module import LabelSmoothingClassifier
    from adaptive_ls.models import small_cnn

    module = LabelSmoothingClassifier.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", net=small_cnn(10, 1, width=8),
        smoothing=AdaptiveSmoothing(ema=0.5, freeze_fraction=1.0))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with one_thread():
        single = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    assert single["test/acc"] == pytest.approx(results["test/acc"], abs=1e-6)
    assert single["test/nll"] == pytest.approx(results["test/nll"], abs=1e-5)
