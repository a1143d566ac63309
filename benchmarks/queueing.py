"""Replay Kueue's scheduler performance configurations against Kaip's pure scheduler, with simulated runtimes.

Kueue's harness (kubernetes-sigs/kueue test/performance/scheduler) creates cohorts of ClusterQueues (nominal 20
CPU, borrowingLimit 100, reclaimWithinCohort Any, withinClusterQueue LowerPriority), feeds each queue workload
classes at fixed creation intervals, and lets each admitted workload "run" for its class's runtime; it reports
wall time, average ClusterQueue usage and mean time to admission per class. Here the same generator drives
Kaip's `Scheduler` in a discrete-event simulation: time is simulated (no API server, no watch latency), and the
scheduler's own CPU time is measured for real.

    .venv/bin/python benchmarks/queueing.py [--config baseline|large-scale|all]

Definitions: wall = simulated time from the start to the last workload finishing; usage = per ClusterQueue,
time-averaged admitted CPU over [0, wall] divided by its nominal quota, averaged over queues (may exceed 100%
with borrowing); time to admission = from creation to the admission that ran to completion.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import time
from dataclasses import dataclass

from kaip.scheduling.model import ClusterQueue, Flavor, FlavorQuotas, PodSet, Preemption, Quota, ResourceGroup, Workload
from kaip.scheduling.scheduler import Scheduler

# name: (count per queue, creation interval ms, runtime ms, priority, cpu request)
Classes = dict[str, tuple[int, int, int, int, int]]


@dataclass(frozen=True)
class Config:
    name: str
    cohorts: int
    queues_per_cohort: int
    classes: Classes
    kueue_wall_s: float
    kueue_usage_pct: float
    kueue_tta_s: dict[str, float]
    thresholds: str


CONFIGS = {
    # kueue test/performance/scheduler/configs/baseline/generator.yaml; figures: queue_train.md section 4.
    "baseline": Config("baseline", 5, 6, {"small": (350, 100, 200, 50, 1), "medium": (100, 500, 500, 100, 5),
                                          "large": (50, 1200, 1000, 200, 20)},
                       351.1, 55.9, {"large": 16.5, "medium": 76.8, "small": 215.5},
                       "maxWall 425 s; usage >= 50%; TTA large 23 s, medium 90 s, small 260 s"),
    # configs/large-scale/generator.yaml (10 cohorts x 100 queues, 50 workloads per queue).
    "large-scale": Config("large-scale", 10, 100, {"small": (35, 60, 150, 50, 1), "medium": (11, 300, 350, 100, 5),
                                                   "large": (4, 700, 700, 200, 20)},
                          1179.0, 38.6, {"large": 105.6, "medium": 256.4, "small": 700.4},
                          "maxWall 1416 s; usage >= 31.6%; TTA large 128 s, medium 308 s, small 841 s"),
}
NOMINAL, BORROWING_LIMIT = 20, 100


@dataclass
class Outcome:
    wall_s: float
    usage_pct: float
    tta_s: dict[str, float]
    admissions: int
    preemptions: int
    workloads: int
    scheduler_cpu_s: float
    cycles: int
    elapsed_s: float


def simulate(cfg: Config) -> Outcome:
    started = time.perf_counter()
    queues = [ClusterQueue(f"cq-{c}-{q}", f"cohort-{c}", (ResourceGroup(("cpu",), (FlavorQuotas("rf", {
        "cpu": Quota(NOMINAL * 1000, BORROWING_LIMIT * 1000)}),)),),
        preemption=Preemption(within_cluster_queue="LowerPriority", reclaim_within_cohort="Any"))
        for c in range(cfg.cohorts) for q in range(cfg.queues_per_cohort)]
    sched = Scheduler(queues, flavors=[Flavor("rf")])
    seq = itertools.count()
    events: list[tuple[float, int, str, str, int]] = []  # (time ms, seq, kind, key, generation)
    spec: dict[str, tuple[str, str, int, int, int, float]] = {}  # key -> (queue, class, runtime, prio, cpu, created)
    for queue in queues:
        for cls, (count, interval, runtime, prio, cpu) in cfg.classes.items():
            for i in range(count):
                t = float(interval * (i + 1))
                key = f"{queue.name}/{cls}-{i}"
                spec[key] = (queue.name, cls, runtime, prio, cpu, t)
                heapq.heappush(events, (t, next(seq), "arrive", key, 0))
    generation: dict[str, int] = {}
    running: dict[str, Workload] = {}
    admitted_at: dict[str, float] = {}
    usage: dict[str, int] = {q.name: 0 for q in queues}
    area: dict[str, float] = {q.name: 0.0 for q in queues}
    last_t = 0.0
    admissions = preemptions = 0
    tta: dict[str, list[float]] = {cls: [] for cls in cfg.classes}

    while events:
        now = events[0][0]
        for name, used in usage.items():
            area[name] += used * (now - last_t)
        last_t = now
        while events and events[0][0] == now:
            _, _, kind, key, gen = heapq.heappop(events)
            queue, cls, runtime, prio, cpu, created = spec[key]
            if kind == "arrive":
                sched.add(Workload(key, queue, (PodSet("main", 1, {"cpu": cpu * 1000}),), prio, created, uid=key))
            elif kind == "finish" and generation.get(key) == gen:
                wl = running.pop(key)
                sched.finish(wl)
                usage[queue] -= cpu
                tta[cls].append((admitted_at[key] - created) / 1000)
        while True:
            result = sched.run()
            for item in result.admitted:
                key = item.workload.key
                queue, cls, runtime, _prio, cpu, _created = spec[key]
                generation[key] = generation.get(key, 0) + 1
                running[key] = item.workload
                admitted_at[key] = now
                usage[queue] += cpu
                admissions += 1
                heapq.heappush(events, (now + runtime, next(seq), "finish", key, generation[key]))
            for item in result.preempted:
                key = item.target.key
                queue, _cls, _runtime, _prio, cpu, _created = spec[key]
                victim = running.pop(key)
                generation[key] += 1  # its pending "finish" no longer counts
                usage[queue] -= cpu
                sched.requeue(victim, timestamp=now)
                preemptions += 1
            if not result.preempted:
                break
    wall_ms = last_t
    usage_pct = sum(area[q.name] / (NOMINAL * wall_ms) for q in queues) / len(queues) * 100
    return Outcome(wall_ms / 1000, usage_pct, {cls: sum(v) / len(v) for cls, v in tta.items() if v}, admissions,
                   preemptions, len(spec), sched.cpu_seconds, sched.cycles, time.perf_counter() - started)


def report(cfg: Config, out: Outcome) -> list[str]:
    lines = [f"## {cfg.name}: {cfg.cohorts} cohorts x {cfg.queues_per_cohort} ClusterQueues, {out.workloads:,} "
             f"workloads (Kueue's thresholds: {cfg.thresholds})",
             f"{'metric':<32}{'Kaip':>12}{'Kueue':>12}{'Kaip/Kueue':>12}",
             f"{'wall time (s, simulated)':<32}{out.wall_s:>12.1f}{cfg.kueue_wall_s:>12.1f}"
             f"{out.wall_s / cfg.kueue_wall_s:>12.3f}",
             f"{'average ClusterQueue usage (%)':<32}{out.usage_pct:>12.1f}{cfg.kueue_usage_pct:>12.1f}"
             f"{out.usage_pct / cfg.kueue_usage_pct:>12.3f}"]
    for cls in ("large", "medium", "small"):
        kaip, kueue = out.tta_s.get(cls, float("nan")), cfg.kueue_tta_s[cls]
        lines.append(f"{'mean time to admission, ' + cls + ' (s)':<32}{kaip:>12.2f}{kueue:>12.1f}{kaip / kueue:>12.3f}")
    per = out.scheduler_cpu_s / max(1, out.admissions) * 1000
    lines += [f"admissions {out.admissions:,} (preemptions {out.preemptions:,}), scheduling cycles {out.cycles:,}",
              f"scheduler CPU time {out.scheduler_cpu_s:.2f} s = {per:.3f} ms per admission; "
              f"simulation took {out.elapsed_s:.1f} s of real time"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    args = parser.parse_args()
    names = list(CONFIGS) if args.config == "all" else [args.config]
    for name in names:
        cfg = CONFIGS[name]
        for line in report(cfg, simulate(cfg)):
            print(line)
        print()


if __name__ == "__main__":
    main()
