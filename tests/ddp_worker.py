"""What each process of the two-process gloo test runs (tests/test_ddp.py). Kept light: spawned processes import it."""
from __future__ import annotations

import torch
import torch.distributed as dist

from adaptive_ls.smoothing import AdaptiveSmoothing, Progress

N, K, WORLD = 12, 3, 2


def steps():
    """Two steps of a batch of 8 samples (a different order each), logits and labels the same on every process."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        index = torch.randperm(N, generator=generator)[:8]
        yield index, torch.randn(8, K, generator=generator), torch.randint(0, K, (8,), generator=generator)


def policy_on_rank(rank: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    policy = AdaptiveSmoothing(ema=0.5, warmup_epochs=0)
    policy.setup(N, K)
    eps = []
    for index, logits, targets in steps():
        mine = slice(rank * 4, rank * 4 + 4)  # this process's half of the batch
        eps.append(policy(logits[mine], targets[mine], index[mine], Progress(0, 1, 0, 1)).eps)
    summed = policy._all_reduce(torch.full((2,), float(rank + 1)))
    torch.save({"memory": policy.memory, "seen": policy.seen, "eps": torch.cat(eps), "summed": summed},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
