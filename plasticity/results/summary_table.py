"""The table a finished run prints: the KL to the exact posterior on every phase at the end of the stream,
per arm, with forgetting and BWT; the closest arm per phase; the timing."""

from __future__ import annotations


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    phases = summary["phases"]
    title = f"KL to the exact posterior (bits per scored token) at the end of the stream — {summary['name']}"
    table = Table(title=title)
    table.add_column("arm")
    for p in phases:
        table.add_column(p, justify="right")
    table.add_column("mean", justify="right")
    table.add_column("forgetting", justify="right")
    table.add_column("BWT (+ = worse)", justify="right")
    arms = {a: r for a, r in summary["arms"].items() if "R_kl_bits" in r}
    for arm, res in arms.items():
        if res.get("diverged"):
            table.add_row(arm, *("diverged" if j == 0 else "-" for j in range(len(phases) + 3)))
            continue
        last = res["R_kl_bits"][-1]
        forgetting = res["forgetting_bits"]
        table.add_row(
            arm, *(f"{v:.4f}" for v in last), f"{res['final_kl_bits']:.4f}",
            f"{max(forgetting):.4f}" if forgetting else "-", f"{res['bwt_bits']:+.4f}",
        )
    console.print(table)
    for arm, res in summary["arms"].items():
        if res.get("diverged"):
            console.print(f"arm {arm} diverged: {res['diverged']}", markup=False)
    arms = {a: r for a, r in arms.items() if not r.get("diverged")}
    if len(arms) > 1:
        for j, p in enumerate(phases):
            best = min(arms, key=lambda a: arms[a]["R_kl_bits"][-1][j])
            console.print(f"phase {j} ({p}): closest to the posterior at the end: [bold]{best}[/bold] "
                          f"({arms[best]['R_kl_bits'][-1][j]:.4f} bits)")
    t = summary["timing"]
    tps = t["train_tokens_per_second"]
    share = t["eval_fraction"]
    speed = f", training {tps:,.0f} tokens/s, evaluation {100 * share:.1f}% of the units' time" if tps else ""
    console.print(f"wall {t['wall_seconds']:.1f} s{speed}")
    console.print(f"run directory: {summary['run_dir']}")
