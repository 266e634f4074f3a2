"""Chaos test: run a sweep, kill it again and again, and check that nothing is lost and nothing changes.

    python scripts/chaos.py                                   # the quickstart sweep, 20 faults
    python scripts/chaos.py --faults 5 --out /tmp/chaos -- data=digits trainer.max_epochs=4 \
        smoothing=none,fixed noise.rate=0.4                   # any sweep: its overrides after --

It first runs the sweep once without faults (the reference). Then it starts the same sweep in a second folder and
injects faults at random moments, each time re-running the same command, until every job has completed:

- SIGKILL of the whole sweep (some of them while a checkpoint is being written, when one can be caught);
- SIGTERM, as SLURM sends on preemption (the job must mark itself interrupted, exit non-zero, and continue when the
  command is run again);
- a second copy of the sweep started while the first runs (each job folder must have one live process at a time),
  both killed a while later;
- one ``checkpoints/last.ckpt`` truncated (the resume must fall back to the newest readable checkpoint).

At the end every job's final metrics and noisy-label hash are compared, exactly, with the reference (on a CPU the
package's runs are bit-for-bit repeatable). It prints the faults injected, the jobs lost and the metrics that differ;
the exit code is 0 only when both are 0.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

QUICKSTART = ["experiment=quickstart", "logger=csv"]
COMPARED = ("test/acc", "test/nll", "test/ece", "test/brier", "val/acc", "val/acc_best", "test/acc_at_best_val",
            "train/loss", "noise/labels_hash", "smoothing", "noise")


def sweep_command(overrides: list[str], sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "adaptive_ls", "-m", *overrides, "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep_dir}"]


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    with open(log, "a") as out:  # the child keeps its own handle
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def job_results(sweep_dir: Path) -> dict[str, dict]:
    """Job folder name -> its results.json (an unreadable or missing one as {})."""
    jobs = {}
    for job in sorted(p.parent for p in sweep_dir.glob("*/.hydra")):
        try:
            jobs[job.name] = json.loads((job / "results.json").read_text())
        except (OSError, ValueError):
            jobs[job.name] = {}
    return jobs


def all_completed(sweep_dir: Path, expected: int) -> bool:
    jobs = job_results(sweep_dir)
    return len(jobs) == expected and all(r.get("status") == "completed" for r in jobs.values())


def writing_checkpoint(sweep_dir: Path) -> bool:
    """A checkpoint is being written: a temporary file sits beside the checkpoints."""
    return any(".tmp" in p.name for p in sweep_dir.glob("*/checkpoints/*"))


def kill(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait()


def run_to_completion(command: list[str], log: Path, timeout: float) -> int:
    proc = start(command, log)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc, signal.SIGKILL)
        return -9


def chaos(overrides: list[str], out: Path, faults: int, seed: int, window: tuple[float, float],
          timeout: float) -> dict:
    """``window`` is in fractions of the work left, estimated from the reference sweep's wall time less the time
    earlier faults let run, so faults strike before the sweep ends on any machine."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    reference, chaotic = out / "reference", out / "chaos"
    log = out / "chaos.log"
    started = time.time()
    code = run_to_completion(sweep_command(overrides, reference), log, timeout)
    reference_jobs = job_results(reference)
    if code != 0 or not reference_jobs or not all_completed(reference, len(reference_jobs)):
        raise SystemExit(f"the reference sweep did not complete (exit {code}); see {log}")
    n_jobs = len(reference_jobs)
    reference_s = time.time() - started
    print(f"reference: {n_jobs} jobs in {reference_s:.0f} s")
    left_s = reference_s

    command = sweep_command(overrides, chaotic)
    injected: dict[str, int] = {}
    kinds = ["SIGKILL", "SIGKILL_WRITING", "SIGTERM", "second_copy"]
    truncate_at = rng.randrange(1, faults) if faults > 1 else None
    for fault in range(faults):
        if all_completed(chaotic, n_jobs):
            break
        if fault == truncate_at:
            candidates = sorted(chaotic.glob("*/checkpoints/last.ckpt"))
            if candidates:
                last = rng.choice(candidates)
                data = last.read_bytes()
                last.write_bytes(data[: len(data) // 2])
                injected["truncated_last_ckpt"] = injected.get("truncated_last_ckpt", 0) + 1
        kind = rng.choice(kinds)
        proc = start(command, log)
        delay = rng.uniform(*window) * left_s
        round_start = time.time()
        deadline = round_start + delay
        second = None
        while time.time() < deadline and proc.poll() is None:
            if kind == "SIGKILL_WRITING" and writing_checkpoint(chaotic):
                break
            if kind == "second_copy" and second is None and time.time() > deadline - delay / 2:
                second = start(command, log)
            time.sleep(0.02)
        if proc.poll() is not None:  # it finished before the fault: nothing injected this round
            continue
        if kind == "SIGTERM":
            kill(proc, signal.SIGTERM)
        else:  # a second copy ran beside the first for a while; then both end the hard way
            kill(proc, signal.SIGKILL)
            if second is not None:
                kill(second, signal.SIGKILL)
        injected[kind] = injected.get(kind, 0) + 1
        left_s = max(left_s - (time.time() - round_start), window[0] * reference_s)

    rounds = 0
    while not all_completed(chaotic, n_jobs) and rounds < 5:  # the last fault may leave work: finish it
        run_to_completion(command, log, timeout)
        rounds += 1
    final = job_results(chaotic)
    lost = [name for name in reference_jobs if final.get(name, {}).get("status") != "completed"]
    differing = [f"{name}: {key} {reference_jobs[name].get(key)!r} != {final[name].get(key)!r}"
                 for name in reference_jobs if name not in lost for key in COMPARED
                 if reference_jobs[name].get(key) != final[name].get(key)]
    return {"jobs": n_jobs, "faults": injected, "faults_total": sum(injected.values()), "jobs_lost": lost,
            "metrics_differing": differing, "wall_time_s": time.time() - started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--faults", type=int, default=20, help="faults to inject (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the faults' kinds and moments")
    parser.add_argument("--out", type=Path, default=Path("outputs/chaos"), help="where both sweeps go")
    parser.add_argument("--window", type=float, nargs=2, default=(0.2, 0.8), metavar=("MIN", "MAX"),
                        help="a fault strikes this long after the sweep (re)starts, as a fraction of the work left "
                             "(the reference sweep's wall time less the time earlier faults let run; default 0.2 0.8)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one sweep command may take")
    parser.add_argument("overrides", nargs="*", help="the sweep's overrides (default: the quickstart sweep)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty: give a new folder")
    summary = chaos(args.overrides or QUICKSTART, args.out, args.faults, args.seed, tuple(args.window), args.timeout)
    (args.out / "chaos.json").write_text(json.dumps(summary, indent=2))
    print(f"faults injected: {summary['faults_total']} {summary['faults']}")
    print(f"jobs lost: {len(summary['jobs_lost'])} {summary['jobs_lost'] or ''}".rstrip())
    print(f"metrics differing: {len(summary['metrics_differing'])}")
    for line in summary["metrics_differing"]:
        print(f"  {line}")
    print(f"wall time: {summary['wall_time_s']:.0f} s ({summary['jobs']} jobs; details in {args.out / 'chaos.json'})")
    return 0 if not summary["jobs_lost"] and not summary["metrics_differing"] else 1


if __name__ == "__main__":
    sys.exit(main())
