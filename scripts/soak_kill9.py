"""Kill -9 soak: a training run killed at random moments and resumed each time ends bit-identical.

    python scripts/soak_kill9.py --trials 30 --out /tmp/soak

Trains a tiny model on the bundled Shakespeare once straight through, then, per trial, as a chain of
``llmcore train [--resume]`` processes of which the first one to three are killed with SIGKILL after a random
delay (often in the middle of writing a checkpoint), the last runs to the end. Every resume must start from
the newest complete checkpoint, and the chain's final weights must equal the straight run's bit for bit.
Prints one line per trial and a summary; exits 1 on any difference or failed resume. Not part of the test suite (it takes minutes); ``tests/unit/test_checkpoint.py`` covers the same
mechanism in-process.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

TRAIN = ["--preset", "debug", "--max-steps", "120", "--eval-interval", "5", "--batch-size", "4",
         "--set", "dropout=0.1", "--no-progress", "--seed", "3"]


def complete_checkpoints(run: Path) -> list[str]:
    """Names of the finished checkpoints (a killed save leaves a ``.tmp`` directory, never a ``ckpt-N``)."""
    return sorted(p.name for p in (run / "trainer_state").glob("ckpt-*") if not p.name.endswith(".tmp"))


def llmcore(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmcore", "train", *args]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("/tmp/llmcore-soak"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, chain = args.out / "straight", args.out / "chain"
    t0 = time.time()
    subprocess.run(llmcore(*TRAIN, "--out", str(straight)), check=True, env=env, capture_output=True)
    duration = time.time() - t0
    target = straight / "model.safetensors"
    total_kills, failures = 0, 0
    for trial in range(args.trials):
        chain = args.out / f"chain-{trial:03d}"
        kills, resumes, budget = 0, 0, rng.randint(1, 3)  # one to three kills in this trial, then run to the end
        while True:
            resume = ["--resume"] if complete_checkpoints(chain) else []
            proc = subprocess.Popen(llmcore(*TRAIN, "--out", str(chain), *resume), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            resumes += bool(resume)
            if kills < budget:
                time.sleep(rng.uniform(0.35, 0.9) * duration)  # past start-up, before the end
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    continue
            _, err = proc.communicate()
            if proc.returncode != 0:
                print(f"trial {trial}: a run failed (exit {proc.returncode}): {err.strip()[-500:]}", flush=True)
                return 1
            break  # the run finished
        same = target.read_bytes() == (chain / "model.safetensors").read_bytes()
        total_kills, failures = total_kills + kills, failures + (not same)
        print(f"trial {trial:3d}: {kills} kill(s), {resumes} resume(s); final model bit-identical: {same}",
              flush=True)
        shutil.rmtree(chain)
    print(f"{args.trials} trials, {total_kills} kills: {args.trials - failures} of {args.trials} bit-identical")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
