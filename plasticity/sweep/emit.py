"""`plasticity sweep FILE --emit-wandb DIR`: the same sweep for `wandb sweep` + `wandb agent` on any machines.

Writes `DIR/<stem>.yaml` — only keys of wandb's sweep schema: `program`, `command` running
`plasticity run <experiment> <fixed overrides> run.root=runs/sweeps/<stem> ${args_no_hyphens}`, `method`,
`metric`, `parameters`, `run_cap`, `project` — and `DIR/README.md` with the commands for every sweep in
DIR. The agent formats each value with Python's str() (`arms=['frozen']`, `optim.lr=1e-05`), which the
override parser reads back as YAML; strings and numbers survive, `None` does not (it becomes 'None').
"""

from __future__ import annotations

from pathlib import Path

import yaml

from plasticity.run.config import load_config
from plasticity.sweep.plan import check_keys, plan
from plasticity.sweep.spec import ARGS_MACRO, PLASTICITY_KEYS, SweepSpec

DEFAULT_METRIC = {"name": "final_kl_bits", "goal": "minimize"}  # a summary key of every arm's wandb run
HEADER = "# plasticity sweep for wandb (emitted by `plasticity sweep {src} --emit-wandb`)\n"


def wandb_config(spec: SweepSpec) -> dict:
    cfg = load_config(spec.experiment, spec.base_overrides)
    base = list(spec.base_overrides)
    if not any(o.startswith(("run.root=", "run.dir=")) for o in base):
        base.append(f"run.root=runs/sweeps/{spec.stem}")  # `plasticity report runs/sweeps/<stem>` on each machine
    out: dict = {"name": spec.name or spec.stem}
    if spec.raw.get("description"):
        out["description"] = spec.raw["description"]
    out["project"] = spec.raw.get("project") or cfg.logger.wandb.project
    entity = spec.raw.get("entity") or cfg.logger.wandb.entity
    if entity:
        out["entity"] = entity
    out["program"] = "plasticity"
    out["command"] = ["plasticity", "run", spec.experiment, *base, ARGS_MACRO]
    out["method"] = spec.method
    out["metric"] = dict(spec.metric) if spec.metric else dict(DEFAULT_METRIC)
    if spec.run_cap:
        out["run_cap"] = spec.run_cap
    for key, value in spec.raw.items():  # early_terminate, controller, ... as given
        if key not in out and key not in PLASTICITY_KEYS and key != "parameters":
            out[key] = value
    out["parameters"] = spec.raw["parameters"]
    return out


def _readme(folder: Path) -> str:
    lines = [
        "# wandb sweeps", "",
        "Create each sweep once, then start agents on as many machines as you like (each agent runs one trial",
        "at a time; `--count N` caps an agent). Run them from the repository root, where `plasticity` is",
        "installed; run directories land under `runs/sweeps/<sweep>/` on each machine.", "",
    ]
    for path in sorted(folder.glob("*.yaml")):
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if not isinstance(cfg, dict) or not path.read_text().startswith("# plasticity sweep"):
            continue
        project = cfg.get("project", "plasticity")
        entity = f"{cfg['entity']}/" if cfg.get("entity") else "ENTITY/"
        lines += [f"- `{path.name}`: `wandb sweep {path}` then, on each machine, "
                  f"`wandb agent {entity}{project}/SWEEP_ID` (SWEEP_ID is printed by `wandb sweep`)"]
    return "\n".join(lines) + "\n"


def emit_wandb(spec: SweepSpec, folder: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """Validate the sweep, write the wandb YAML and the README; returns both paths."""
    folder = Path(folder)
    if spec.method in ("grid", "random"):
        plan(spec, folder, seed)  # every trial (writes nothing)
    else:  # bayes draws its trials online: check each key at representative values
        check_keys(spec)
    config = wandb_config(spec)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.stem}.yaml"
    from plasticity.files import atomic_write_text

    text = HEADER.format(src=spec.path) + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    atomic_write_text(path, text)
    readme = folder / "README.md"
    atomic_write_text(readme, _readme(folder))
    return path, readme
