"""The tables a finished run prints: the KL to the exact posterior on every phase at the end of the stream,
per arm, with forgetting and BWT; the closest arm per phase; the regret and the cost of each shift from the
per-step record; the timing."""

from __future__ import annotations

import statistics

from streams.checks import is_number

MAX_PHASE_COLUMNS = 12  # beyond, the table shows the mean over phases only


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    phases = summary["phases"]
    wide = len(phases) <= MAX_PHASE_COLUMNS
    title = f"KL to the exact posterior (bits per scored token) at the end of the stream — {summary['name']}"
    table = Table(title=title)
    table.add_column("arm")
    for p in phases if wide else []:
        table.add_column(p, justify="right")
    table.add_column("mean" if wide else f"mean over {len(phases)} phases", justify="right")
    table.add_column("forgetting", justify="right")
    table.add_column("BWT (+ = worse)", justify="right")
    arms = {a: r for a, r in summary["arms"].items() if "R_kl_bits" in r}
    for arm, res in arms.items():
        if res.get("diverged"):
            table.add_row(arm, *("diverged" if j == 0 else "-" for j in range((len(phases) if wide else 0) + 3)))
            continue
        last = res["R_kl_bits"][-1]
        forgetting = res["forgetting_bits"]
        table.add_row(
            arm, *(f"{v:.4f}" for v in (last if wide else [])), f"{res['final_kl_bits']:.4f}",
            f"{max(forgetting):.4f}" if forgetting else "-", f"{res['bwt_bits']:+.4f}",
        )
    console.print(table)
    for arm, res in summary["arms"].items():
        if res.get("diverged"):
            console.print(f"arm {arm} diverged: {res['diverged']}", markup=False)
    arms = {a: r for a, r in arms.items() if not r.get("diverged")}
    if len(arms) > 1 and wide:
        for j, p in enumerate(phases):
            best = min(arms, key=lambda a: arms[a]["R_kl_bits"][-1][j])
            console.print(f"phase {j} ({p}): closest to the posterior at the end: [bold]{best}[/bold] "
                          f"({arms[best]['R_kl_bits'][-1][j]:.4f} bits)")
    _print_regret(console, summary)
    t = summary["timing"]
    tps = t["train_tokens_per_second"]
    share = t["eval_fraction"]
    speed = f", training {tps:,.0f} tokens/s, evaluation {100 * share:.1f}% of the units' time" if tps else ""
    console.print(f"wall {t['wall_seconds']:.1f} s{speed}, {t.get('workers', 1)} worker(s)")
    console.print(f"run directory: {summary['run_dir']}")


def _mean(values: list | None, start: int = 1) -> float | None:
    vals = [v for v in (values or [])[start:] if is_number(v)]
    return statistics.fmean(vals) if vals else None


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _print_regret(console, summary: dict) -> None:
    """Regret over the phases after pretraining (the KL of every batch's prediction before its update, per
    scored token), and per phase on average: the shift cost, the adaptation time, the warm start's cost."""
    from rich.table import Table

    arms = {a: r for a, r in summary["arms"].items() if r.get("regret_bits_online") is not None}
    if not arms:
        return
    warm = any("warm_start_regret_bits" in r for r in arms.values())
    table = Table(title="every step, before the update: regret over the phases after pretraining (bits per "
                        "token, bits); per phase on average: shift cost (bits), adaptation (steps), and the warm "
                        "start's Δ against a fresh learner")
    for name in ("arm", "regret/token", "regret", "shift cost", "adaptation",
                 *(("Δregret warm", "Δadapt. warm") if warm else ())):
        table.add_column(name, justify="left" if name == "arm" else "right")
    for arm, res in arms.items():
        cells = [_fmt(res["regret_bits_per_token_online"]), _fmt(res["regret_bits_online"], ".1f"),
                 _fmt(_mean(res.get("shift_cost_bits")), ".2f"), _fmt(_mean(res.get("adaptation_steps")), ".1f")]
        if warm:
            cells += [_fmt(_mean(res.get("warm_start_regret_bits")), "+.2f"),
                      _fmt(_mean(res.get("warm_start_adaptation_steps")), "+.1f")]
        table.add_row(arm, *cells)
    console.print(table)
