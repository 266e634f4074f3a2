#!/usr/bin/env python
"""Training throughput of adaptive_ls against a raw PyTorch loop and the usual torchvision + DataLoader pipeline.

One process, one model, one data set, one batch size, three ways to train it (images/s over steady-state steps):

  (a) package     this package: LabelSmoothingClassifier + its data module (uint8 images on the device, batched
                  crop/flip/normalise in on_after_batch_transfer) in a real ``pl.Trainer.fit``;
  (b) raw         a hand-written loop over the same device-resident uint8 tensors, with the same augmentation
                  functions, policy, loss, optimizer and schedule: the limit for this model;
  (c) dataloader  the conventional pipeline: a torchvision-CIFAR10-style dataset (PIL image per sample, RandomCrop(32,
                  padding=4), RandomHorizontalFlip, ToTensor, Normalize) + DataLoader workers, then the raw loop's step.

    python scripts/benchmark.py                                     # CPU-sized defaults; synthetic data
    python scripts/benchmark.py --data <cifar10 root> --model small_cnn --json bench.json
    python scripts/benchmark.py --data <cifar10 root> --model resnet18 --batch-size 512 --steps 200  # GPU
    python scripts/benchmark.py --policy fixed,adaptive --modes package,raw   # the cost of per-sample ε over fixed ε
    python scripts/benchmark.py --model fastnet --members 1,4,8     # stacks of 1, 4, 8 jobs (StackedClassifier)
    python scripts/benchmark.py --members 1,8 --stack-execution loop   # how the stack runs its members
    python scripts/benchmark.py --sweep                             # the quickstart sweep: basic, joblib, stacked
    python scripts/benchmark.py --sweep --sweep-epochs 5 --launchers basic,stacked --json sweep.json

``--data`` takes a torchvision root (the folder holding cifar-10-batches-py), a JPEG-encoded copy (cifar10_jpeg.npz,
or the folder holding it) or an npz with x_train/y_train; without it the images are random (synthetic,
CIFAR-shaped), and the output says which. Timing: each mode runs ``--warmup`` steps, then ``--steps`` timed steps
between two device synchronisations (no other synchronisation is added); ``--repeats`` interleaves the modes (a, b,
c, a, b, c, ...) and reports the median, so load from other processes hits all three alike.

``--members M1,M2,...`` times mode (a) only, once per M: M jobs (seeds seed, seed+1, ..., each its own net, policy
and data module) trained as one StackedClassifier in a real ``pl.Trainer.fit``, over the same timed window. It
reports the stack's total images/s (M x batch x steps / seconds), images/s per member, the total against the
single job's (M=1: the plain LabelSmoothingClassifier of mode (a), always measured) and peak memory per M.

``--sweep`` times the real quickstart sweep (``python -m adaptive_ls -m experiment=quickstart``) once per launcher
of ``--launchers``: Hydra's basic launcher, ``hydra/launcher=joblib`` (``--n-jobs`` at once; on a CPU each job gets
cores / n_jobs threads) and ``hydra/launcher=stacked``, W&B offline. Besides the wall times it checks that every
launcher wrote the same report as the basic one: per job folder, the largest difference of test/acc, test/ece and
val/acc_best, and the W&B offline runs each job left (one each).
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run this checkout's package, wherever it is installed from

from adaptive_ls.data import (  # noqa: E402
    CIFAR10DataModule, NoisyLabelDataModule, batch_random_crop, batch_random_hflip, normalize)
from adaptive_ls.noise import NoNoise  # noqa: E402
from adaptive_ls.smoothing import Progress, smoothed_cross_entropy  # noqa: E402
from adaptive_ls.resolvers import auto_precision  # noqa: E402

CIFAR_MEAN, CIFAR_STD = CIFAR10DataModule.mean, CIFAR10DataModule.std  # the package's normalisation, in every mode
MODES = ("package", "raw", "dataloader")
JSON_KEYS = ("package_img_per_s", "raw_img_per_s", "dataloader_img_per_s", "package_vs_raw", "package_vs_dataloader",
             "device", "model", "batch_size")


# ---------------------------------------------------------------------------------------------------------------------
# Data: real CIFAR-10 when given, synthetic otherwise
# ---------------------------------------------------------------------------------------------------------------------


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, count: int) -> np.ndarray:
    from PIL import Image

    def one(i: int) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        return np.stack(list(pool.map(one, range(count))))


def load_cifar(path: Optional[str], num_images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``num_images`` CIFAR-10 training images as (uint8 [N, 32, 32, 3], int64 labels [N], description)."""
    if path is None:
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(num_images, 32, 32, 3), dtype=np.uint8)
        return images, rng.integers(0, 10, size=num_images), "synthetic (random uint8, CIFAR-shaped; no --data given)"
    root = Path(path).expanduser()
    if (root / "cifar10_jpeg.npz").is_file():
        root = root / "cifar10_jpeg.npz"
    if (root / "cifar-10-batches-py").is_dir():
        import pickle

        images, labels = [], []
        for k in range(1, 6):
            with open(root / "cifar-10-batches-py" / f"data_batch_{k}", "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(batch["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.extend(batch["labels"])
            if sum(len(x) for x in images) >= num_images:
                break
        images, labels = np.concatenate(images)[:num_images], np.asarray(labels[:num_images], dtype=np.int64)
        return images, labels, f"real CIFAR-10, torchvision layout ({len(labels)} training images) from {root}"
    if root.is_file() and root.suffix == ".npz":
        z = np.load(root)
        if "train_jpeg" in z:
            count = min(num_images, len(z["train_labels"]))
            images = _decode_jpegs(z["train_jpeg"], z["train_offsets"], count)
            return (images, z["train_labels"][:count].astype(np.int64),
                    f"real CIFAR-10, JPEG-encoded copy ({count} training images, decoded) from {root}")
        if "x_train" in z:
            count = min(num_images, len(z["y_train"]))
            return (np.ascontiguousarray(z["x_train"][:count]), z["y_train"][:count].astype(np.int64),
                    f"real CIFAR-10, uint8 npz ({count} training images) from {root}")
    raise SystemExit(f"--data {path}: no CIFAR-10 found (expected cifar10_jpeg.npz, cifar-10-batches-py/ or an npz "
                     f"with x_train/y_train)")


class ArrayDataModule(NoisyLabelDataModule):
    """The package's data module over in-memory CIFAR arrays: clean labels, no validation split."""

    mean, std = CIFAR_MEAN, CIFAR_STD

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, **kw):
        super().__init__(val_size=0, noise=NoNoise(), **kw)
        self._images = torch.from_numpy(np.ascontiguousarray(images_hwc.transpose(0, 3, 1, 2)))
        self._labels = torch.from_numpy(labels.astype(np.int64))

    def load_arrays(self):
        return self._images, self._labels, self._images[:64], self._labels[:64]


class PILDataset(torch.utils.data.Dataset):
    """What ``torchvision.datasets.CIFAR10.__getitem__`` does (PIL image from the uint8 array, then the transform),
    plus the sample index the smoothing policies need."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images_hwc, labels.tolist(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i], i


# ---------------------------------------------------------------------------------------------------------------------
# Model, policy, optimizer: the same for every mode
# ---------------------------------------------------------------------------------------------------------------------


def build_net(name: str, seed: int, overrides: Sequence[str] = ()) -> nn.Module:
    """conf/model/<name>.yaml with ``overrides`` (``widths=[32,64,128]``), seeded: the same initial weights in every
    mode."""
    import hydra
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    node = OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml"), OmegaConf.from_dotlist(overrides))
    return hydra.utils.instantiate(node, num_classes=10, in_channels=3)


def build_policy(name: str, overrides: list[str]):
    """conf/smoothing/<name>.yaml, with its warm-up switched off so that the timed steps run the policy itself."""
    import hydra
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "smoothing" / f"{name}.yaml")
    if "warmup_epochs" in cfg:
        cfg.warmup_epochs = 0
    cfg.merge_with_dotlist(list(overrides))
    return hydra.utils.instantiate(cfg)


def optimizer_factories(total_steps: int):
    import hydra
    from omegaconf import OmegaConf

    optimizer = hydra.utils.instantiate(OmegaConf.load(REPO / "conf" / "optimizer" / "sgd.yaml"))
    scheduler = hydra.utils.instantiate(OmegaConf.load(REPO / "conf" / "scheduler" / "cosine.yaml"))
    return optimizer, (lambda opt: scheduler(opt, total_steps=total_steps)), scheduler


# ---------------------------------------------------------------------------------------------------------------------
# Timing and memory
# ---------------------------------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SyncCounter:
    """Counts host-device synchronisations (CUDA only, ``torch.cuda.set_sync_debug_mode``) by Python source line."""

    def __init__(self, enabled: bool):
        self.enabled, self.sources, self._catcher, self._log = enabled, Counter(), None, None

    def start(self) -> None:
        if self.enabled:
            self._catcher = warnings.catch_warnings(record=True)
            self._log = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")

    def stop(self) -> None:
        if self.enabled and self._catcher is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._catcher.__exit__(None, None, None)
            for w in self._log:
                if "synchroniz" in str(w.message):
                    self.sources[f"{Path(w.filename).name}:{w.lineno}"] += 1
            self._catcher = None

    @property
    def total(self) -> Optional[int]:
        return sum(self.sources.values()) if self.enabled else None


class Window:
    """Wall-clock time of steps ``warmup+1 .. warmup+steps``, read between two device synchronisations."""

    def __init__(self, device: torch.device, warmup: int, steps: int, sync_debug: bool, profile: Optional[Path] = None):
        self.device, self.warmup, self.steps, self.count = device, warmup, steps, 0
        self.t0 = self.t1 = self.c0 = self.c1 = None
        self.syncs = SyncCounter(sync_debug and device.type == "cuda")
        self.profile_path, self._profiler = profile, None

    def step_done(self) -> None:
        self.count += 1
        if self.count == self.warmup:
            synchronize(self.device)
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self.syncs.start()
            if self.profile_path is not None:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if self.device.type == "cuda":
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self._profiler = torch.profiler.profile(activities=activities)
                self._profiler.__enter__()
        elif self.count == self.warmup + self.steps:
            self.syncs.stop()
            synchronize(self.device)
            self.t1, self.c1 = time.perf_counter(), time.process_time()
            if self._profiler is not None:
                self._profiler.__exit__(None, None, None)
                self.write_profile()

    def write_profile(self) -> None:
        """Top operators by host time and by device time, and the device-busy share of the window's wall time."""
        events = self._profiler.key_averages()
        lines = [f"{self.steps} steps, {1000 * (self.t1 - self.t0) / self.steps:.3f} ms/step wall (profiled)"]
        if self.device.type == "cuda":
            busy_us = sum(e.self_device_time_total for e in events)
            lines.append(f"device busy {busy_us / 1000 / self.steps:.3f} ms/step = "
                         f"{busy_us / 1e6 / (self.t1 - self.t0):.1%} of wall time")
            lines.append(events.table(sort_by="self_device_time_total", row_limit=25))
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=40))
        self.profile_path.parent.mkdir(parents=True, exist_ok=True)
        self.profile_path.write_text("\n".join(lines))

    @property
    def done(self) -> bool:
        return self.count >= self.warmup + self.steps

    def seconds(self) -> float:
        if self.t1 is None:
            raise RuntimeError(f"only {self.count} of {self.warmup + self.steps} steps ran")
        return self.t1 - self.t0

    def result(self, device: torch.device) -> dict:
        """Wall seconds, this process's CPU seconds (all its threads; not DataLoader workers), memory, syncs."""
        return {"seconds": self.seconds(), "cpu_seconds": self.c1 - self.c0, "peak_mb": peak_memory_mb(device),
                "syncs": self.syncs.total, "sync_sources": dict(self.syncs.sources.most_common(8))}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # Linux: "5" resets the peak resident set size (VmHWM) of this process
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------------
# The three modes
# ---------------------------------------------------------------------------------------------------------------------


def profile_path(args, mode: str) -> Optional[Path]:
    return Path(args.profile) / f"{mode}_profile.txt" if args.profile else None


def array_datamodule(args, data, seed: int) -> ArrayDataModule:
    """The package's data module over the benchmark's images, drawing its order and augmentation from ``seed``."""
    images, labels = data
    return ArrayDataModule(images, labels, batch_size=args.batch_size, seed=seed, loader=args.loader,
                           num_workers=args.workers if args.loader == "dataloader" else 0)


def fit_timed(args, module, datamodule, device: torch.device, precision: str, name: str) -> dict:
    """``module`` trained on ``datamodule`` in a real pl.Trainer.fit for ``--warmup`` + ``--steps`` steps, the window
    timed by a callback at each training batch's end."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import TQDMProgressBar

    window = Window(device, args.warmup, args.steps, args.sync_debug, profile_path(args, name))

    class Timer(pl.Callback):
        def on_train_batch_end(self, trainer, *_):
            window.step_done()

    callbacks = [Timer()] + ([TQDMProgressBar(refresh_rate=args.progress_bar)] if args.progress_bar else [])
    trainer = pl.Trainer(accelerator=device.type, devices=1, precision=precision,
                         max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=bool(args.progress_bar),
                         enable_model_summary=False, benchmark=device.type == "cuda", callbacks=callbacks)
    gc.collect()  # the previous run's tensors, so that its memory does not count in this run's peak
    if device.type == "cuda":
        torch.cuda.empty_cache()
    reset_peak_memory(device)
    trainer.fit(module, datamodule=datamodule)
    return window.result(device)


def run_package(args, data, device: torch.device, precision: str) -> dict:
    """(a) LabelSmoothingClassifier + the package's data module in a real pl.Trainer.fit."""
    from adaptive_ls.module import LabelSmoothingClassifier

    optimizer, scheduler, _ = optimizer_factories(args.warmup + args.steps)
    module = LabelSmoothingClassifier(build_net(args.model, args.seed, args.model_arg),
                                      build_policy(args.policy, args.policy_arg),
                                      optimizer=optimizer, scheduler=scheduler, num_classes=10,
                                      channels_last=args.channels_last, compile=args.compile)
    return fit_timed(args, module, array_datamodule(args, data, args.seed), device, precision, "package")


def run_stack(args, data, device: torch.device, precision: str, members: int) -> dict:
    """Mode (a) for ``members`` jobs at once: a StackedClassifier of ``members`` nets (seeds seed, seed+1, ...), each
    with its own policy and its own data module, in a real pl.Trainer.fit. One member is mode (a) itself."""
    if members == 1:
        return {**run_package(args, data, device, precision), "execution": "single"}
    from adaptive_ls.stacking import StackedClassifier, StackedDataModule, StackedNet

    seeds = [args.seed + i for i in range(members)]
    optimizer, scheduler, _ = optimizer_factories(args.warmup + args.steps)
    net = StackedNet([build_net(args.model, seed, args.model_arg) for seed in seeds], execution=args.stack_execution)
    module = StackedClassifier(net, [build_policy(args.policy, args.policy_arg) for _ in seeds], optimizer=optimizer,
                               scheduler=scheduler, num_classes=10, channels_last=args.channels_last)
    datamodule = StackedDataModule([array_datamodule(args, data, seed) for seed in seeds])
    result = fit_timed(args, module, datamodule, device, precision, f"package_{members}_members")
    resolved = net.resolved_execution(device)  # auto: loop or vmap, by device
    execution = resolved if resolved == args.stack_execution else f"{args.stack_execution} ({resolved})"
    return {**result, "execution": execution}


def _train_steps(batches, net, policy, device, precision, channels_last, total, window, dataset_size) -> None:
    """The step every hand-written loop shares: forward (autocast), policy, smoothed CE, SGD step, schedule."""
    optimizer_factory, scheduler_factory, _ = optimizer_factories(total)
    optimizer = optimizer_factory(params=net.parameters())
    scheduler = scheduler_factory(optimizer)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    policy.setup(dataset_size, 10)
    policy.to(device)
    net.train()
    step = 0
    for epoch in range(10**9):
        for images, labels, index in batches(epoch):
            with autocast:
                logits = net(images.contiguous(memory_format=memory_format))
                target = policy(logits.detach(), labels, index, Progress(step, total, epoch, 1))
                loss = smoothed_cross_entropy(logits, labels, target.eps, target.q)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            window.step_done()
            if window.done:
                return


def _prepare_net(args, device: torch.device) -> tuple[nn.Module, bool]:
    net = build_net(args.model, args.seed, args.model_arg).to(device)
    channels_last = args.channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if args.compile:
        net.compile()
    return net, channels_last


def run_raw(args, data, device: torch.device, precision: str) -> dict:
    """(b) The limit: device-resident uint8 tensors, the package's batched augmentation, nothing else."""
    reset_peak_memory(device)
    images = torch.from_numpy(np.ascontiguousarray(data[0].transpose(0, 3, 1, 2))).to(device)
    labels = torch.from_numpy(data[1].astype(np.int64)).to(device)
    mean, std = torch.tensor(CIFAR_MEAN, device=device), torch.tensor(CIFAR_STD, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    n, b = labels.shape[0], args.batch_size

    def batches(epoch: int):
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n - b + 1, b):
            index = order[start:start + b]
            x = batch_random_hflip(batch_random_crop(images[index], 4, generator), generator)
            yield normalize(x, mean, std), labels[index], index

    net, channels_last = _prepare_net(args, device)
    window = Window(device, args.warmup, args.steps, args.sync_debug, profile_path(args, "raw"))
    _train_steps(batches, net, build_policy(args.policy, args.policy_arg), device, precision, channels_last,
                 args.warmup + args.steps, window, n)
    return window.result(device)


def run_dataloader(args, data, device: torch.device, precision: str) -> dict:
    """(c) The peer: PIL transforms per image in DataLoader workers, pinned host batches copied to the device."""
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR_MEAN, CIFAR_STD)])
    dataset = PILDataset(data[0], data[1], transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(args.seed))

    def batches(epoch: int):
        for x, y, i in loader:
            yield (x.to(device, non_blocking=True), y.to(device, non_blocking=True), i.to(device, non_blocking=True))

    reset_peak_memory(device)
    net, channels_last = _prepare_net(args, device)
    window = Window(device, args.warmup, args.steps, args.sync_debug, profile_path(args, "dataloader"))
    _train_steps(batches, net, build_policy(args.policy, args.policy_arg), device, precision, channels_last,
                 args.warmup + args.steps, window, len(dataset))
    del loader  # stop the persistent workers
    return window.result(device)


RUNNERS = {"package": run_package, "raw": run_raw, "dataloader": run_dataloader}


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}
    try:
        import pytorch_lightning as pl

        info["lightning"] = pl.__version__
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["device"] = f"{info['gpu']} (torch {torch.__version__})"
    else:
        info["device"] = f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads " \
                         f"(torch {torch.__version__})"
    return info


def summarise(args, results: dict[str, list[dict]], info: dict, data_source: str, precision: str,
              channels_last: bool) -> dict:
    out = {"device": info["device"], "model": " ".join([args.model, *args.model_arg]), "batch_size": args.batch_size,
           "policy": args.policy,
           "policy_args": list(args.policy_arg), "precision": precision, "channels_last": channels_last,
           "compile": args.compile, "loader": args.loader, "workers": args.workers, "steps": args.steps,
           "warmup": args.warmup, "repeats": args.repeats, "num_images": args.num_images, "data": data_source,
           "machine": info}
    for mode, runs in results.items():
        rates = [args.steps * args.batch_size / r["seconds"] for r in runs]
        out[f"{mode}_img_per_s"] = statistics.median(rates)
        out[f"{mode}_img_per_s_all"] = rates
        out[f"{mode}_cpu_ms_per_step"] = statistics.median(1000 * r["cpu_seconds"] / args.steps for r in runs)
        out[f"{mode}_peak_mb"] = max(r["peak_mb"] for r in runs)
        if runs[0]["syncs"] is not None:
            out[f"{mode}_syncs_in_window"] = runs[-1]["syncs"]
            out[f"{mode}_sync_sources"] = runs[-1]["sync_sources"]
    for other in ("raw", "dataloader"):
        a, b = out.get("package_img_per_s"), out.get(f"{other}_img_per_s")
        out[f"package_vs_{other}"] = a / b if a and b else None
    if "package" in results and "raw" in results:  # robust to other load on a CPU-only machine (one thread each)
        out["package_vs_raw_cpu_time"] = out["raw_cpu_ms_per_step"] / out["package_cpu_ms_per_step"]
    return out


def memory_kind(out: dict) -> str:
    return "CUDA max allocated" if "gpu" in out["machine"] else "process peak RSS"


def print_header(out: dict) -> None:
    print(f"\nmachine: {out['device']}; load average (1 min) at start {out['machine']['load_avg_1m']}")
    print(f"data: {out['data']}")
    print(f"model {out['model']}, batch {out['batch_size']}, policy {out['policy']} {' '.join(out['policy_args'])}, "
          f"precision {out['precision']}, channels_last {out['channels_last']}, compile {out['compile']}, "
          f"{out['warmup']} warm-up + {out['steps']} timed steps, median of {out['repeats']}")


def print_table(out: dict) -> None:
    mem = memory_kind(out)
    print_header(out)
    print(f"\n| mode | images/s | runs | host CPU ms/step | peak memory ({mem}) |")
    print("| --- | ---: | --- | ---: | ---: |")
    names = {"package": f"(a) package (loader={out['loader']})", "raw": "(b) raw loop, device data",
             "dataloader": f"(c) torchvision + DataLoader ({out['workers']} workers)"}
    for mode in MODES:
        if f"{mode}_img_per_s" in out:
            runs = ", ".join(f"{r:.0f}" for r in out[f"{mode}_img_per_s_all"])
            print(f"| {names[mode]} | {out[f'{mode}_img_per_s']:.1f} | {runs} | {out[f'{mode}_cpu_ms_per_step']:.1f} "
                  f"| {out[f'{mode}_peak_mb']:.0f} MB |")
    for key, label in (("package_vs_raw", "a/b (target >= 0.90)"), ("package_vs_dataloader", "a/c (GPU target >= 3)"),
                       ("package_vs_raw_cpu_time", "a/b by host CPU time per step")):
        if out.get(key) is not None:
            print(f"{label}: {out[key]:.3f}")
    for mode in MODES:
        if f"{mode}_syncs_in_window" in out:
            print(f"host syncs in the timed window, {mode}: {out[f'{mode}_syncs_in_window']} "
                  f"{out[f'{mode}_sync_sources'] or ''}")


def summarise_members(args, results: dict[int, list[dict]], info: dict, data_source: str, precision: str,
                      channels_last: bool) -> dict:
    """The single job's figures (as mode (a)'s) plus one row per stack size under ``members``."""
    out = summarise(args, {"package": results[1]}, info, data_source, precision, channels_last)
    out["stack_execution"] = args.stack_execution
    single = out["package_img_per_s"]
    rows = []
    for m, runs in results.items():
        rates = [m * args.steps * args.batch_size / r["seconds"] for r in runs]
        total = statistics.median(rates)
        rows.append({"members": m, "img_per_s": total, "img_per_s_all": rates, "img_per_s_per_member": total / m,
                     "vs_single": total / single, "peak_mb": max(r["peak_mb"] for r in runs),
                     "cpu_ms_per_step": statistics.median(1000 * r["cpu_seconds"] / args.steps for r in runs),
                     "execution": runs[-1]["execution"]})
    out["members"] = rows
    return out


def print_members_table(out: dict) -> None:
    print_header(out)
    print(f"stack execution {out['stack_execution']}; M=1 is the plain LabelSmoothingClassifier (mode package)")
    print(f"\n| members | execution | images/s total | images/s per member | total vs M=1 | runs | host CPU ms/step "
          f"| peak memory ({memory_kind(out)}) |")
    print("| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for row in out["members"]:
        runs = ", ".join(f"{r:.0f}" for r in row["img_per_s_all"])
        print(f"| {row['members']} | {row['execution']} | {row['img_per_s']:.1f} | {row['img_per_s_per_member']:.1f} "
              f"| {row['vs_single']:.2f} | {runs} | {row['cpu_ms_per_step']:.1f} | {row['peak_mb']:.0f} MB |")


def bench_members(args, data, source: str, device: torch.device, precision: str, info: dict) -> dict:
    """Mode (a) for each stack size of ``--members``, interleaved over ``--repeats``."""
    results: dict[int, list[dict]] = {m: [] for m in args.members}
    for r in range(args.repeats):
        for m in args.members:
            result = run_stack(args, data, device, precision, m)
            results[m].append(result)
            print(f"  [{r + 1}/{args.repeats}] {m} member(s): "
                  f"{m * args.steps * args.batch_size / result['seconds']:.1f} images/s", flush=True)
    out = summarise_members(args, results, info, source, precision, args.channels_last)
    print_members_table(out)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Whole-sweep timing: the quickstart sweep under the basic, joblib and stacked launchers
# ---------------------------------------------------------------------------------------------------------------------

# basic_split: the basic launcher with joblib's threads per job (CPU), which separates joblib's gain from parallel
# jobs from its gain from fewer threads per job. Not run unless asked for.
LAUNCHERS = ("basic", "joblib", "stacked", "basic_split")
DEFAULT_LAUNCHERS = ("basic", "joblib", "stacked")
DEFAULT_SWEEP = ("experiment=quickstart", "trainer.enable_progress_bar=false")
SWEEP_METRICS = ("test/acc", "test/ece", "val/acc_best")  # compared job by job against the basic launcher's


def sweep_overrides(args) -> list[str]:
    """The sweep's Hydra overrides: ``--sweep-overrides`` (default: the quickstart experiment), and
    ``trainer.max_epochs`` when ``--sweep-epochs`` is given."""
    overrides = list(DEFAULT_SWEEP if args.sweep_overrides is None else args.sweep_overrides)
    if args.sweep_epochs is not None:
        overrides.append(f"trainer.max_epochs={args.sweep_epochs}")
    return overrides


def launcher_settings(name: str, n_jobs: int, threads_per_job: Optional[int]) -> tuple[list[str], Optional[int]]:
    """One launcher's extra Hydra overrides and its threads per job (None: the environment's)."""
    if name == "joblib":
        return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"], threads_per_job
    if name == "stacked":
        return ["hydra/launcher=stacked"], None
    # explicit: an experiment may choose another launcher (experiment=cifar10_cpu runs joblib_2)
    return ["hydra/launcher=basic"], threads_per_job if name == "basic_split" else None


def _job_order(name: str) -> tuple:
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def sweep_jobs(sweep_dir: Path) -> dict[str, dict]:
    """Every job folder of a sweep (``<n>/``, by number) and its results.json (``{}`` where it has none)."""
    folders = {p.parent for p in sweep_dir.glob("*/results.json")} | {p.parent for p in sweep_dir.glob("*/.hydra")}
    jobs = {}
    for folder in sorted(folders, key=lambda f: _job_order(f.name)):
        try:
            jobs[folder.name] = json.loads((folder / "results.json").read_text())
        except (OSError, ValueError):
            jobs[folder.name] = {}
    return jobs


def wandb_offline_runs(sweep_dir: Path, jobs) -> dict[str, int]:
    """The W&B offline run folders each job left (``<job>/wandb/offline-run-*``)."""
    return {job: len([p for p in (sweep_dir / job / "wandb").glob("offline-run-*") if p.is_dir()]) for job in jobs}


def _number(value) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def compare_jobs(reference: dict[str, dict], jobs: dict[str, dict]) -> dict:
    """Jobs matched by folder number: the largest absolute difference of each of SWEEP_METRICS (over the jobs where
    both have a finite value; None where none has) and how many jobs that covers."""
    common = [job for job in reference if job in jobs]
    out = {"jobs_matched": len(common), "only_in_basic": [j for j in reference if j not in jobs],
           "only_here": [j for j in jobs if j not in reference], "max_abs_diff": {}, "jobs_compared": {}}
    for key in SWEEP_METRICS:
        pairs = [(_number(reference[j].get(key)), _number(jobs[j].get(key))) for j in common]
        diffs = [abs(a - b) for a, b in pairs if a is not None and b is not None]
        out["max_abs_diff"][key] = max(diffs) if diffs else None
        out["jobs_compared"][key] = len(diffs)
    return out


def run_sweep(name: str, overrides: list[str], extra: list[str], threads: Optional[int], root: Path) -> dict:
    """One sweep, ``python -m adaptive_ls -m`` in a subprocess with W&B offline, into ``root/<name>``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               WANDB_MODE="offline")
    if threads is not None:  # CPU: split the cores between the jobs instead of oversubscribing them
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    sweep_dir = root / name
    cmd = [sys.executable, "-m", "adaptive_ls", "-m", *overrides, *extra, f"hydra.sweep.dir={sweep_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    jobs = sweep_jobs(sweep_dir)
    statuses = [result.get("status") for result in jobs.values()]
    return {"seconds": seconds, "jobs": len(jobs), "completed": statuses.count("completed"),
            "returncode": proc.returncode, "threads_per_job": threads, "launcher_overrides": extra,
            "wandb_offline_runs": wandb_offline_runs(sweep_dir, jobs), "results": jobs}


def _wandb_summary(counts: dict[str, int]) -> str:
    if not counts:
        return "no jobs"
    if len(set(counts.values())) == 1:
        return f"{next(iter(counts.values()))} each ({len(counts)} jobs)"
    return ", ".join(f"#{job}: {n}" for job, n in counts.items())


def _diff(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_sweep(out: dict) -> None:
    print(f"\nmachine: {out['device']}; load average (1 min) at start {out['machine']['load_avg_1m']}")
    print(f"sweep: python -m adaptive_ls -m {' '.join(out['overrides'])}")
    print("\n| launcher | wall s | jobs | completed | speed vs basic |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, run in out["runs"].items():
        label = f"{name} n_jobs={out['n_jobs']}" if name == "joblib" else name
        if run["threads_per_job"] is not None:
            label += f" ({run['threads_per_job']} thread(s) per job)"
        speed = "n/a" if run["speed_vs_basic"] is None else f"{run['speed_vs_basic']:.2f}x"
        print(f"| {label} | {run['seconds']:.1f} | {run['jobs']} | {run['completed']} | {speed} |")
    print("\nthe same report? (jobs matched by folder number against the basic launcher's)")
    print("\n| launcher | jobs matched | max abs diff " + " | max abs diff ".join(SWEEP_METRICS)
          + " | W&B offline runs per job |")
    print("| --- | ---: | " + "---: | " * len(SWEEP_METRICS) + "--- |")
    for name, run in out["runs"].items():
        same = out["same_report"].get(name)
        if same is None:
            cells = ["reference" if name == "basic" else "n/a (no basic run)"] + [""] * len(SWEEP_METRICS)
        else:
            cells = [str(same["jobs_matched"])] + [
                f"{_diff(same['max_abs_diff'][key])} ({same['jobs_compared'][key]} jobs)" for key in SWEEP_METRICS]
        print(f"| {name} | {' | '.join(cells)} | {_wandb_summary(run['wandb_offline_runs'])} |")
    for name, run in out["runs"].items():
        odd = [job for job, n in run["wandb_offline_runs"].items() if n != 1]
        if odd:
            print(f"note: {name}: {len(odd)} of {run['jobs']} job(s) without exactly one W&B offline run "
                  f"(with logger=wandb, the quickstart's logger, each job writes one)")


def time_sweep(args) -> dict:
    """Wall-clock time of one sweep run by each of ``--launchers``, and whether each wrote the basic launcher's
    report (per job: test/acc, test/ece, val/acc_best; one W&B offline run)."""
    overrides = sweep_overrides(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = machine(device)
    threads_per_job = None if device.type == "cuda" else max(1, (os.cpu_count() or 1) // args.n_jobs)
    out = {"overrides": overrides, "launchers": list(args.launchers), "n_jobs": args.n_jobs,
           "device": info["device"], "machine": info, "runs": {}, "same_report": {}}
    with tempfile.TemporaryDirectory(prefix="adaptive_ls_sweep_") as tmp:
        root = Path(args.sweep_dir).resolve() if args.sweep_dir else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name in args.launchers:
            extra, threads = launcher_settings(name, args.n_jobs, threads_per_job)
            run = run_sweep(name, overrides, extra, threads, root)
            out["runs"][name] = run
            print(f"{name}: {run['seconds']:.1f} s for {run['jobs']} jobs ({run['completed']} completed)", flush=True)
    basic = out["runs"].get("basic")
    for name, run in out["runs"].items():
        run["speed_vs_basic"] = basic["seconds"] / run["seconds"] if basic else None
        if basic and name != "basic":
            out["same_report"][name] = {**compare_jobs(basic["results"], run["results"]),
                                        "wandb_offline_runs": run["wandb_offline_runs"]}
    for run in out["runs"].values():  # the figures stay; the whole results.json files do not go into the JSON
        run["results"] = {job: {key: result.get(key) for key in ("status", *SWEEP_METRICS)}
                          for job, result in run["results"].items()}
    print_sweep(out)
    return out


# ---------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", default=None, help="CIFAR-10: torchvision root, JPEG copy (cifar10_jpeg.npz) or uint8 npz")
    p.add_argument("--num-images", type=int, default=None,
                   help="training images to use (default: 50000 on a GPU, enough for the steps on a CPU)")
    p.add_argument("--model", default="fastnet", help="a conf/model option: fastnet | resnet18 | small_cnn")
    p.add_argument("--batch-size", type=int, default=512 if gpu else 64)
    p.add_argument("--steps", type=int, default=200 if gpu else 20, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=30 if gpu else 5, help="untimed steps first (compilation, autotune)")
    p.add_argument("--repeats", type=int, default=1, help="run every mode this many times, interleaved; median")
    p.add_argument("--policy", default="fixed",
                   help="conf/smoothing option(s), warm-up off: none|fixed|annealed|adaptive; a comma-separated list "
                        "(fixed,adaptive) interleaves them and reports each one's speed relative to the first")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model setting, e.g. --model-arg widths=[32,64,128] (repeatable)")
    p.add_argument("--policy-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a policy setting, e.g. --policy-arg ema=0.9 (repeatable)")
    p.add_argument("--precision", default="auto", help="auto (bf16-mixed on a GPU, 32-true on a CPU) | 32-true | ...")
    p.add_argument("--channels-last", default="true", choices=("true", "false"),
                   help="NHWC memory order in every mode (the package's default: true)")
    p.add_argument("--compile", action="store_true", help="torch.compile the net in every mode")
    p.add_argument("--workers", type=int, default=min(8, max(1, (os.cpu_count() or 2) - 1)),
                   help="DataLoader workers for (c) (and for (a) with --loader dataloader)")
    p.add_argument("--loader", default="device", choices=("device", "dataloader"), help="the package's data path")
    p.add_argument("--modes", default=None,
                   help="comma-separated subset of package,raw,dataloader (default: all; with --members: package)")
    p.add_argument("--members", default=None, metavar="M1,M2,...",
                   help="mode package only, as a stack of M jobs (StackedClassifier) for each M, e.g. 1,4,8; M=1 "
                        "(the plain single job, the reference) is always measured")
    p.add_argument("--stack-execution", default="auto", choices=("auto", "vmap", "loop"),
                   help="with --members: how StackedNet runs its members (auto: loop on a CPU, vmap on a GPU)")
    p.add_argument("--progress-bar", type=int, default=0, metavar="N",
                   help="show the package's progress bar, redrawn every N steps (default: off)")
    p.add_argument("--sync-debug", action="store_true",
                   help="CUDA: count host-device synchronisations in each timed window (slower; not for figures)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="torch.profiler over each timed window: DIR/<mode>_profile.txt (slower; not for figures)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    p.add_argument("--sweep", action="store_true",
                   help="time the quickstart sweep under each of --launchers, and compare their results")
    p.add_argument("--launchers", default=",".join(DEFAULT_LAUNCHERS),
                   help=f"comma-separated, for --sweep: {' | '.join(LAUNCHERS)} (basic_split: the basic launcher "
                        f"with joblib's threads per job, CPU)")
    p.add_argument("--sweep-epochs", type=int, default=None,
                   help="trainer.max_epochs of the sweep's jobs (default: the experiment's own)")
    p.add_argument("--n-jobs", type=int, default=2, help="joblib jobs at once for --sweep")
    p.add_argument("--sweep-overrides", nargs="*", default=None,
                   help=f"replace the sweep's Hydra overrides (default: {' '.join(DEFAULT_SWEEP)})")
    p.add_argument("--sweep-dir", default=None, metavar="DIR",
                   help="keep the sweeps' folders (DIR/<launcher>/, with sweep.log) instead of a temporary folder")
    args = p.parse_args(argv)
    modes = [m for m in (args.modes or ",".join(MODES)).split(",") if m]
    if any(m not in MODES for m in modes):
        p.error(f"--modes {args.modes}: allowed are {','.join(MODES)}")
    if args.members is not None:
        try:
            members = [int(m) for m in args.members.split(",") if m.strip()]
        except ValueError:
            members = []
        if not members or min(members) < 1:
            p.error(f"--members {args.members}: allowed is a comma-separated list of integers >= 1, e.g. 1,4,8")
        if args.modes is not None and modes != ["package"]:
            p.error(f"--modes {args.modes} with --members: a stack is timed in mode package only; allowed is "
                    f"--modes package (or no --modes)")
        if len(args.policy.split(",")) > 1:
            p.error(f"--policy {args.policy} with --members: allowed is one policy")
        if args.compile and max(members) > 1:
            p.error("--compile with --members: a stack (StackedClassifier) does not compile; leave --compile out")
        if 1 not in members:
            print("--members: adding M=1, the single job the stacks are compared with", file=sys.stderr)
        args.members = sorted(set(members) | {1})
        modes = ["package"]
    launchers = [name for name in args.launchers.split(",") if name]
    if not launchers or any(name not in LAUNCHERS for name in launchers) or len(set(launchers)) != len(launchers):
        p.error(f"--launchers {args.launchers}: allowed are distinct names out of {','.join(LAUNCHERS)}")
    args.launchers = launchers
    if args.sweep_epochs is not None and args.sweep_epochs < 1:
        p.error("--sweep-epochs must be at least 1")
    if args.n_jobs < 1:
        p.error("--n-jobs must be at least 1")
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1")
    args.channels_last = args.channels_last == "true"
    args.modes = modes
    if args.num_images is None:
        args.num_images = 50_000 if gpu else max(args.batch_size * 8, args.batch_size * (args.warmup + args.steps))
    if args.num_images < args.batch_size * 2:
        p.error(f"--num-images {args.num_images} must be at least two batches ({2 * args.batch_size})")
    return args


def bench_modes(args, data, source: str, device: torch.device, precision: str, info: dict) -> dict:
    """Every mode of ``--modes`` for every policy of ``--policy``, interleaved over ``--repeats``."""
    policies = args.policy.split(",")
    results = {pol: {m: [] for m in args.modes} for pol in policies}
    for r in range(args.repeats):
        for pol in policies:  # interleaved, so that a change of machine load hits every policy and mode alike
            for mode in args.modes:
                result = RUNNERS[mode](argparse.Namespace(**{**vars(args), "policy": pol}), data, device, precision)
                results[pol][mode].append(result)
                print(f"  [{r + 1}/{args.repeats}] {pol} {mode}: "
                      f"{args.steps * args.batch_size / result['seconds']:.1f} images/s", flush=True)
    summaries = {pol: summarise(argparse.Namespace(**{**vars(args), "policy": pol}), results[pol], info, source,
                                precision, args.channels_last) for pol in policies}
    for summary in summaries.values():
        print_table(summary)
    out = dict(summaries[policies[0]])
    if len(policies) > 1:  # relative speed of each policy against the first (e.g. adaptive vs fixed)
        out["by_policy"] = summaries
        out["policy_speed_vs_first"] = {
            pol: {m: summaries[pol][f"{m}_img_per_s"] / summaries[policies[0]][f"{m}_img_per_s"]
                  for m in args.modes} for pol in policies[1:]}
        for pol, ratios in out["policy_speed_vs_first"].items():
            print(f"{pol} vs {policies[0]}, images/s ratio: "
                  + ", ".join(f"{m} {ratio:.3f}" for m, ratio in ratios.items()))
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.sweep:
        out = time_sweep(args)
    else:
        device = torch.device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        precision = auto_precision(device.type) if args.precision == "auto" else args.precision
        info = machine(device)
        images, labels, source = load_cifar(args.data, args.num_images, args.seed)
        args.num_images = len(labels)
        print(f"using {source}", flush=True)
        bench = bench_modes if args.members is None else bench_members
        out = bench(args, (images, labels), source, device, precision, info)
    write_json(args.json, out)
    return out


def write_json(path: Optional[str], out: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
