"""Benchmark: the cost of ``privacy.secure_mode`` (ChaCha20 noise and sampling).

    .venv/bin/python -m simulation.bench_secure_mode [--records 9000] [--repeats 5]

Times one DP local round of the default advert risk model (2 local epochs, expected batch
128) with secure_mode off and on, alternating in one process, and prints the medians and
their ratio. A ratio, not a time, is the result: this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from federation.config import PrivacySettings, TrainSettings
from federation.privacy import plan_noise
from federation.tasks import get_task
from federation.training import train_local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=9000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(words, 40)) for _ in range(args.records)]
    y = (rng.random(args.records) < 0.06).astype(np.float32)
    task = get_task("advert-risk", {})
    x = task.featurize(texts)
    train = TrainSettings()
    plan = plan_noise(num_records=args.records, batch_size=train.batch_size,
                      local_epochs=train.local_epochs, planned_rounds=5, target_epsilon=3.0,
                      target_delta=1e-5, accountant="rdp", where="benchmark")
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for secure in (False, True):
            model = task.build_model()
            privacy = PrivacySettings(target_epsilon=3.0, target_delta=1e-5,
                                      secure_mode=secure)
            start = time.perf_counter()
            train_local(model, x, y, train=train, privacy=privacy, plan=plan)
            times[secure].append(time.perf_counter() - start)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"records {args.records}, {plan.steps_per_round} DP steps per round, "
          f"{sum(p.numel() for p in task.build_model().parameters())} parameters")
    print(f"secure_mode off: median {off:.3f} s per round")
    print(f"secure_mode on:  median {on:.3f} s per round")
    print(f"ratio on/off: {on / off:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
