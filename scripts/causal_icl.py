"""Causal in-context learning against the exact posterior: what the transformer gets right by rows seen, on
observational and interventional values, what only interventions can tell, and what drift in the edges does.

Usage:
    plasticity run causal_icl seeds=3 run.dir=runs/causal_icl   # train (3 seeds)
    python scripts/causal_icl.py runs/causal_icl                 # these tables (a seed parent or one run)

1. The pretrained transformer (= the frozen arm) on the eval bank of its own prior, by rows seen: the KL
   (bits per scored value) to the exact posterior p*, on observational (`obs`) and interventional (`do`)
   values, for the model and two exact reference predictors — `ignore marks` (the same Bayesian averaging
   over DAGs, but every DO marker read as OBS: interventions taken for observations) and `known graph` (the
   predictive given each sequence's true DAG). The last column block is the gap to `known graph`,
   KL(p_G ‖ q): the expected excess log-loss of q over a predictor that knows the DAG, so for q = p* it is the
   price of structure uncertainty that more rows must pay off. `response to the marks`: how far a
   prediction moves when the DO markers are read as OBS, KL(q(tokens) ‖ q(tokens, marks as OBS)) — for p* it
   equals the `ignore marks` KL; a model that reads the marks as the oracle does moves as far.
2. From the oracle alone: the entropy (bits) of the posterior over the 25 DAGs and over the 11 Markov
   equivalence classes by rows seen, with and without interventions (up to `--rows` rows).
3. The drift (fixed chain 0→1→2, then 1→2 flipped into a collider 0→1←2): each arm's KL at the end of each
   phase on every phase's bank, on all, observational and interventional values.
Every figure is the mean over seeds with a 95% Student-t interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from plasticity.eval.calibration import LN2, kl_nats
from plasticity.results.stats import mean_ci, mean_ci_text
from plasticity.run.build import build
from plasticity.run.config import load_run_config
from streams.families.causal import Causal, ignoring_interventions


def kl_bits(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Row-wise KL(p ‖ q) in bits (the calibration module's, on probabilities)."""
    return kl_nats(p.double(), q.double().clamp_min(1e-300).log()) / LN2


def cell(values: list[float], digits: int = 3) -> str:
    return mean_ci_text(mean_ci(values), digits, missing="–")


def seed_runs(path: Path) -> list[Path]:
    runs = sorted(p for p in path.glob("seed_*") if (p / "summary.json").exists())
    return runs or [path]


def in_context(run: Path) -> dict[str, dict[tuple[str, int], float]]:
    """Per predictor: (obs|do, rows seen) -> mean KL to p* and to the known-graph predictive."""
    cfg = load_run_config(run)
    built = build(cfg)
    stream = built.stream
    fam: Causal = stream.phases[0].family
    bank = stream.eval_bank(0)
    model = built.new_model(cfg.seed)
    model.load_state_dict(torch.load(run / "checkpoints" / "pretrained.pt", weights_only=True)["model"])
    model.eval()
    def predict(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([torch.softmax(model(tokens[i : i + 256]).double(), -1)
                              for i in range(0, len(tokens), 256)])

    V = fam.vocab_size
    q = predict(bank.tokens)
    q_ignored = predict(ignoring_interventions(fam, bank.tokens))
    exact = bank.posterior[..., :V]
    known = fam.predictive(bank.tokens, graphs=bank.latent["graph"])[0]
    ignore = fam.predictive(ignoring_interventions(fam, bank.tokens))[0]
    rows_seen = (torch.arange(fam.seq_len) // (fam.n_nodes + 1)).expand_as(bank.scored)
    out: dict[str, dict[tuple[str, int], float]] = {}
    # how far each prediction moves when the DO markers are read as OBS: the oracle's is KL(p* ‖ ignore marks)
    response = {"model": kl_bits(q[..., :V], q_ignored[..., :V]), "p*": kl_bits(exact, ignore)}
    for name, pred in (("model", q[..., :V]), ("p*", exact), ("ignore marks", ignore), ("known graph", known)):
        to_exact, to_known = kl_bits(exact, pred), kl_bits(known, pred)
        moved = response.get(name)
        for group in ("obs", "do"):
            mask = bank.latent[f"scored_{group}"]
            for r in range(fam.n_rows):
                m = mask & (rows_seen == r)
                out.setdefault(f"{name}|p*", {})[(group, r)] = float(to_exact[m].mean())
                out.setdefault(f"{name}|G", {})[(group, r)] = float(to_known[m].mean())
                if moved is not None:
                    out.setdefault(f"{name}|marks", {})[(group, r)] = float(moved[m].mean())
            out[f"{name}|p*"][(group, -1)] = float(to_exact[mask].mean())
            out[f"{name}|G"][(group, -1)] = float(to_known[mask].mean())
            if moved is not None:
                out[f"{name}|marks"][(group, -1)] = float(moved[mask].mean())
    return out


def graph_entropy(rows: int, n_sequences: int = 2048, seed: int = 0) -> dict[float, tuple[list, list]]:
    out = {}
    for p in (0.0, 0.5):
        fam = Causal(n_nodes=3, n_values=3, n_rows=rows, p_intervene=p)
        batch = fam.sample(n_sequences, torch.Generator().manual_seed(seed))
        h_dag, h_class = fam.graph_entropy_bits(fam.graph_posterior(batch.tokens))
        out[p] = (h_dag.mean(0).tolist(), h_class.mean(0).tolist())
    return out


def drift(run: Path) -> dict[tuple[str, int, int, str], float]:
    """(arm, end of phase i, bank j, all|obs|do) -> KL bits, from the rows at the phase ends."""
    stream = build(load_run_config(run)).stream
    ends = {p.start + p.steps: i for i, p in enumerate(stream.phases)}
    out = {}
    with open(run / "metrics.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["step"] in ends:
                for key, label in (("kl_bits", "all"), ("kl_bits_obs", "obs"), ("kl_bits_do", "do")):
                    if r.get(key) is not None:
                        out[(r["arm"], ends[r["step"]], r["eval_phase"], label)] = r[key]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--rows", type=int, default=32, help="rows for the oracle's graph-entropy table")
    args = ap.parse_args()
    runs = seed_runs(args.run_dir)
    print(f"{len(runs)} run(s): {', '.join(str(r) for r in runs)}\n")

    ic = [in_context(r) for r in runs]
    n_rows = max(r for (_, r) in ic[0]["model|p*"]) + 1
    names = ("model", "ignore marks", "known graph")
    print("## 1. In context, by rows seen: KL to the exact posterior p* (bits per value)\n")
    print("| rows seen | " + " | ".join(f"{n} obs | {n} do" for n in names)
          + " | p* to known graph obs | p* to known graph do | response to the marks, do: p* | model |")
    print("|---|" + "---|" * (2 * len(names) + 4))
    for r in [*range(n_rows), -1]:
        cells = [cell([s[f"{n}|p*"][(g, r)] for s in ic]) for n in names for g in ("obs", "do")]
        cells += [cell([s["p*|G"][(g, r)] for s in ic]) for g in ("obs", "do")]
        cells += [cell([s[f"{n}|marks"][("do", r)] for s in ic]) for n in ("p*", "model")]
        print(f"| {'all' if r < 0 else r} | " + " | ".join(cells) + " |")

    print(f"\n## 2. The oracle's uncertainty about the graph by rows seen (bits; 2048 sequences, {args.rows} rows)\n")
    ent = graph_entropy(args.rows)
    print("| rows seen | DAGs, observational only | classes, observational only | DAGs, half under do | "
          "classes, half under do |")
    print("|---|---|---|---|---|")
    for r in sorted({0, 1, 2, 4, 8, 16, args.rows} & set(range(args.rows + 1))):
        print(f"| {r} | {ent[0.0][0][r]:.3f} | {ent[0.0][1][r]:.3f} | {ent[0.5][0][r]:.3f} | {ent[0.5][1][r]:.3f} |")

    print("\n## 3. Drift: KL (bits) at the end of each phase, on each phase's bank (all / obs / do values)\n")
    dr = [drift(r) for r in runs]
    phases = json.loads((runs[0] / "summary.json").read_text())["phases"]
    arms = sorted({a for d in dr for (a, _, _, _) in d}, key=lambda a: (a != "pretrain", a == "fresh", a))
    print("| arm | at the end of | " + " | ".join(f"on {p}" for p in phases) + " |")
    print("|---|---|" + "---|" * len(phases))
    for arm in arms:
        for i, ph in enumerate(phases):
            cells = []
            for j in range(len(phases)):
                parts = [cell([d[(arm, i, j, g)] for d in dr if (arm, i, j, g) in d]) for g in ("all", "obs", "do")]
                cells.append(" / ".join(parts))
            if any(c != "– / – / –" for c in cells):
                print(f"| {arm} | {ph} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
