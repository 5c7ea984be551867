"""What a metrics.jsonl row holds, named once for everything that writes or reads rows (torch-free).

One row per arm, evaluation step and eval phase: `arm`, `step`, `phase` (the phase being trained),
`eval_phase`, `eval_phase_name`, the calibration metrics below, the by-position curves and the probes.
"""

# Rows of the run that are not arms of the config: the shared pretraining and the fresh learners.
PRETRAIN_ARM, FRESH_ARM = "pretrain", "fresh"
RESERVED_ARMS = (PRETRAIN_ARM, FRESH_ARM)

# Units of work: the pretraining's checkpoints and records are named `pretrained`, a fresh learner's
# `fresh@<phase>`, an arm's by the arm (plasticity.run.work_units).
PRETRAIN_UNIT = "pretrained"


def unit_arm(unit: str) -> str:
    """The arm label of a unit's rows and records."""
    return FRESH_ARM if unit.startswith(f"{FRESH_ARM}@") else PRETRAIN_ARM if unit == PRETRAIN_UNIT else unit


ROW_KEYS = ("arm", "step", "phase", "eval_phase", "eval_phase_name")
# The calibration metrics of a row, in bits (plasticity.eval.calibration); `kl_bits_general`, the KL to the
# family's own posterior for a phase with a finite task pool (streams.pool), is null for the others.
ROW_METRICS = ("kl_bits", "entropy_gap_bits", "nll_bits", "bayes_nll_bits", "nll_gap_se_bits", "ece",
               "kl_bits_general")
BY_POSITION = ("kl_bits_by_position", "model_entropy_bits_by_position", "posterior_entropy_bits_by_position",
               "kl_bits_general_by_position")


# A family may split its scored tokens into groups (streams.base.GROUP_MASK_PREFIX, e.g. the causal family's
# observational and interventional values): rows then carry `kl_bits_<group>` and its by-position curve.
def is_group_metric(key: str) -> bool:
    """A token group's KL in a row (`kl_bits_<group>`), as opposed to the fixed metrics and curves."""
    return key.startswith("kl_bits_") and key not in ROW_METRICS and not key.endswith("_by_position")
