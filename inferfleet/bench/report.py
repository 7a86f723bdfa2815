"""Tables, target ratios and plots of a `BenchResult`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inferfleet.bench.measure import Summary
from inferfleet.bench.runner import BenchResult

HEAVY, SMALL, CNN = "digits_mlp", "digits", "cnn"


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, checked against a run."""

    text: str
    value: float
    goal: float
    higher_is_better: bool = True
    #: How the value was measured, where the text alone does not say.
    detail: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.goal if self.higher_is_better else self.value <= self.goal

    def line(self) -> str:
        mark = "met" if self.met else "NOT met"
        return f"- {self.text}: {self.value:.2f} (goal {'>=' if self.higher_is_better else '<='}" \
               f" {self.goal:g}) {mark}{'; ' + self.detail if self.detail else ''}"


def _find(result: BenchResult, model: str, pattern: str) -> list[Summary]:
    return [s for s in result.summaries if s.model == model and re.fullmatch(pattern, s.scenario)]


def _rate(result: BenchResult, model: str, pattern: str) -> float:
    found = _find(result, model, pattern)
    return max((s.rate for s in found), default=math.nan)


def targets(result: BenchResult) -> list[Target]:
    """The targets of issue 12 that this run measured."""
    checks = []
    for model, goal in ((CNN, 0.80), (HEAVY, 0.80)):
        checks += _bulk_target(result, model, goal)
    ceiling = _rate(result, SMALL, r"transport ceiling .*")
    bulk = _rate(result, SMALL, r"fleet bulk .*")
    if not math.isnan(ceiling * bulk):
        checks.append(Target(f"{SMALL}: bulk / transport ceiling", bulk / ceiling, 0.5))
    for model in (SMALL, HEAVY):
        naive = _rate(result, model, "naive")
        single = _rate(result, model, "fleet single-sample jobs")
        if not math.isnan(naive * single):
            checks.append(Target(f"{model}: single-sample jobs / naive", single / naive, 10.0))
    checks += _memory_targets(result)
    for model in (SMALL, HEAVY):
        checks += _light_load_targets(result, model)
    return checks


def _bulk_target(result: BenchResult, model: str, goal: float) -> list[Target]:
    """Bulk over raw best batch: the median of the rounds' ratios, each fleet run against
    the raw runs just before it (the machine's speed drifts between a run's scenarios),
    with the ratio of the medians measured apart beside it."""
    rounds = result.paired_bulk.get(model)
    if not rounds:
        return []
    apart = _rate(result, model, r"fleet bulk \(.*") / _rate(result, model, r"raw batch \d+")
    return [Target(f"{model}: bulk / raw best batch", float(np.median(rounds)), goal,
                   detail=f"median of {len(rounds)} round(s), raw measured in each just "
                          f"before the fleet ({', '.join(f'{r:.2f}' for r in rounds)}); "
                          f"the medians measured apart give {apart:.2f}")]


def _light_load_targets(result: BenchResult, model: str) -> list[Target]:
    naive = _find(result, model, "naive latency, 1 in flight")
    fleet = _find(result, model, "fleet latency, 1 in flight")
    if not (naive and fleet):
        return []
    return [Target(f"{model}: light-load p99 of the fleet, ms", fleet[0].p99_ms, 10.0,
                   higher_is_better=False),
            Target(f"{model}: light-load p50 fleet / naive", fleet[0].p50_ms / naive[0].p50_ms,
                   1.0, higher_is_better=False)]


def _memory_targets(result: BenchResult) -> list[Target]:
    if result.memory is None:
        return []
    return [Target(f"client peak RSS growth / (input + outputs), {result.memory.samples:,} "
                   "samples", result.memory.client_ratio, 2.0, higher_is_better=False),
            Target("worker RSS growth across the memory run (after a warm-up run)",
                   result.memory.worker_growth, 0.05, higher_is_better=False)]


def costs(result: BenchResult) -> list[str]:
    """Costs the run measured that have no goal: what an opt-in setting costs."""
    lines = []
    for model in sorted({s.model for s in result.summaries}):
        plain = _find(result, model, re.escape("submit alone"))
        durable = _find(result, model, re.escape("submit alone, WAIT 1 replica"))
        if plain and durable:
            lines.append(f"- {model}: a submit with wait_replicas=1 (Redis WAIT, one replica) "
                         f"costs {durable[0].p50_ms / plain[0].p50_ms:.2f}x the p50 time of "
                         f"one without ({durable[0].p50_ms:.2f} vs {plain[0].p50_ms:.2f} ms; "
                         f"{durable[0].rate:,.0f} vs {plain[0].rate:,.0f} submits/s)")
        lines += _priority_lines(result, model)
        lines += _cache_lines(result, model)
    return lines


def _cache_lines(result: BenchResult, model: str) -> list[str]:
    rates = {(repeated, cache): _rate(result, model, re.escape(
        f"fleet bulk, {repeated} repeated, cache {cache}"))
        for repeated in ("50%", "0%") for cache in ("on", "off")}
    if any(math.isnan(rate) for rate in rates.values()):
        return []
    gain = rates["50%", "on"] / rates["50%", "off"]
    miss = rates["0%", "on"] / rates["0%", "off"]
    return [f"- {model}: the result cache with half the samples repeated: "
            f"{rates['50%', 'on']:,.0f} samples/s against {rates['50%', 'off']:,.0f} with it "
            f"off ({gain:.2f}x); with every sample new (all misses): "
            f"{rates['0%', 'on']:,.0f} against {rates['0%', 'off']:,.0f} ({miss:.2f}x)"]


def _priority_lines(result: BenchResult, model: str) -> list[str]:
    idle = _find(result, model, "fleet latency, 1 in flight")
    high = _find(result, model, r"fleet high job behind .* backfill")
    normal = _find(result, model, r"fleet normal job behind .* backfill")
    if not (idle and high and normal):
        return []
    backfill = high[0].scenario.removeprefix("fleet high job behind ")
    return [f"- {model}: a `high` single-sample job behind a {backfill}: p50 "
            f"{high[0].p50_ms:.1f} ms, p99 {high[0].p99_ms:.1f} ms, "
            f"{high[0].p50_ms / idle[0].p50_ms:.1f}x its p50 on an idle fleet "
            f"({idle[0].p50_ms:.1f} ms); a `normal` one waits {normal[0].p50_ms:,.0f} ms"]


def markdown(result: BenchResult) -> str:
    """A table of every summary with ratios to raw best batch and to naive, and the CPU
    microseconds per sample that Redis, the workers and the producer spent."""
    lines = ["| model | scenario | samples/s | p50 ms | p99 ms | vs raw best | vs naive | "
             "CPU us/sample: Redis | workers | producer |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in result.summaries:
        best = _rate(result, s.model, r"raw batch \d+")
        naive = _rate(result, s.model, "naive")
        latency = "load" in s.scenario or "latency" in s.scenario
        cpu = " | ".join(_us(s.cpu_us.get(side)) for side in ("redis", "workers", "client"))
        lines.append(
            f"| {s.model} | {s.scenario} | {s.rate:,.0f} | {_ms(s.p50_ms)} | {_ms(s.p99_ms)} | "
            f"{'' if latency else _pct(s.rate / best)} | "
            f"{'' if latency else _times(s.rate / naive)} | {cpu} |")
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:,.1f}"


def _ms(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}"


def _pct(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1%}"


def _times(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1f}x"


def plot(result: BenchResult, path: Path) -> None:
    """Throughput per scenario and model (log scale), and latency against offered load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({s.model for s in result.summaries})
    figure, (bars, lines) = plt.subplots(1, 2, figsize=(14, 5.5))
    names = ["raw best", "naive", "fleet single-sample jobs", "fleet bulk",
             "drain naive", "drain fleet single-sample", "drain fleet bulk"]
    width = 0.8 / max(1, len(models))
    for index, model in enumerate(models):
        rates = [max(_rate(result, model, r"raw batch \d+"), 0),
                 *(_rate(result, model, re.escape(n) + ".*") for n in names[1:])]
        xs = [i + index * width for i in range(len(names))]
        bars.bar(xs, [0 if math.isnan(r) else r for r in rates], width, label=model)
    bars.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(names))])
    bars.set_xticklabels(names, rotation=30, ha="right")
    bars.set_yscale("log")
    bars.set_ylabel("samples/s (log)")
    bars.set_title("Throughput, producer + Redis + workers on one machine")
    bars.legend()
    for model in models:
        for system in ("naive", "fleet"):
            points = sorted((float(s.scenario.split()[2].rstrip("/s")), s.p50_ms, s.p99_ms)
                            for s in _find(result, model, f"{system} load .*"))
            if points:
                lines.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                           label=f"{model} {system} p50")
                lines.plot([p[0] for p in points], [p[2] for p in points], linestyle="--",
                           marker="x", label=f"{model} {system} p99")
    lines.set_xlabel("offered load, single-sample jobs/s")
    lines.set_ylabel("end-to-end latency, ms (log)")
    lines.set_yscale("log")
    lines.set_title("Latency against offered load")
    lines.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
