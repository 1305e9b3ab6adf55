"""What the live training loss costs a trial: the time per entry of pushing it from a Tune
trial, one actor call per entry (period 0) against the shipped sender (one call per 0.5 s), and
the driver's drain. A compiled MAML step on sine takes about 0.7 ms on 2 cores (docs/benchmarks.md).
Run: python benchmarks/live_push.py"""

from __future__ import annotations

import tempfile
import time

import ray
from ray import tune

from metatune.study._ray.live import LiveLog, LiveSender

PUSHES = 2000


def main() -> None:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    live = LiveLog(period_s=0.0)
    senders = {"one call per entry": LiveSender(live.sender().inbox, period_s=0.0), "shipped sender": live.sender()}
    entry = {"iteration": 100, "train_loss": 1.5, "stats/grad_norm": 0.3}

    def trial(config: dict) -> None:
        send = senders[config["sender"]]
        start = time.perf_counter()
        for i in range(PUSHES):
            send({**entry, "iteration": i})
        tune.report({"us_per_entry": (time.perf_counter() - start) / PUSHES * 1e6})

    with tempfile.TemporaryDirectory() as d:
        grid = tune.Tuner(
            trial,
            param_space={"sender": tune.grid_search(list(senders))},
            tune_config=tune.TuneConfig(max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=d, verbose=0),
        ).fit()
        for res in grid:
            print(f"{res.config['sender']:>20}: {res.metrics['us_per_entry']:7.1f} us per entry ({PUSHES} entries)")
    time.sleep(1.0)
    start = time.perf_counter()
    drained = live.drain(force=True)
    print(f"drain of {sum(len(v) for v in drained.values())} entries: {(time.perf_counter() - start) * 1e3:.1f} ms")
    live.close()
    ray.shutdown()


if __name__ == "__main__":
    main()
