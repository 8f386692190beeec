"""The names under which the service stores things in a study: one place for all of them.

A study outlives the code that wrote it: `hpo status`, the dashboard, `hpo report` and
`hpo export` read what workers stored, possibly with a later version of this package.
So every user-attr and system-attr name is a constant here, and writers and readers
import it instead of spelling the string. Renaming one breaks studies already stored.
"""

from __future__ import annotations

# ---- study user attrs -------------------------------------------------------------------
STUDY_FILE_ATTR = "study_file"  # the study file as launched (password masked)
BUDGET_ATTR = "n_trials"  # the study-wide trial budget
BASE_MODEL_ATTR = "base_model"  # content hash of the base model (also on each trial)
BASE_ARTIFACT_ATTR = "base_model_artifact"  # its artifact id in the study's store
CONFIRMED_BEST_ATTR = "confirmed_best"  # `hpo confirm`: the trial chosen by mean val value

# ---- study system attrs -----------------------------------------------------------------
BEST_NOTES_ATTR = "hpo:best_notes"  # {trial_id: body} of the dashboard notes we wrote

# ---- trial system attrs -----------------------------------------------------------------
HEARTBEAT_ATTR = "hpo:heartbeat"  # a worker's last beat, through the gRPC storage proxy

# ---- trial user attrs: bookkeeping ------------------------------------------------------
SEED_ATTR = "seed"  # the trial's SAE seed
DATA_SHA256_ATTR = "data_sha256"  # checksum of the task's data
TRIAL_WEIGHTS_ATTR = "trial_weights"  # artifact id of the weights the trial scored
PRUNED_AT_STEP_ATTR = "pruned_at_step"  # SAE step at which the pruner stopped it
DIVERGED_ATTR = "diverged"  # why it diverged: a FAIL that counts toward the budget
SURPLUS_ATTR = "surplus"  # lost the race for the budget's last slot: never ran
INTERRUPTED_ATTR = "interrupted"  # stopped by Ctrl-C: a FAIL outside the budget
ERROR_ATTR = "error"  # raised an error (type: first line): a FAIL outside the budget
CONFIRMATION_ATTR = "confirmation"  # `hpo confirm`: mean ± std over fresh seeds

# ---- trial user attrs: what the trial found (validation only) ---------------------------
# Besides these, each objective and error of the result is stored under its own name.
LAYER_ATTR = "layer"  # the edited layer
ALPHA_ATTR = "alpha"  # the ablation strength chosen on validation
ABLATED_COMPONENTS_ATTR = "ablated_components"
SELECTION_ATTR = "selection"  # the edit strategy that picked them (params.ablate)
LABELS_ATTR = "labels"  # the edit's label regime: "concept" or "group" labels on probe
REMOVED_FRACTIONS_ATTR = "removed_fractions"  # ablate = "fitted": layer -> fractions
COMPENSATE_BIAS_ATTR = "compensate_bias"  # each bias keeps the removed part's mean
BIAS_SHIFT_ATTR = "bias_shift"  # layer -> a fitted move of its bias (× α)
EDIT_SETTINGS_ATTR = "edit_settings"  # what the in-trial edit search chose
EDIT_SEARCH_ATTR = "edit_search"  # every setting it tried, with its held-out score
ALPHA_CURVE_ATTR = "alpha_curve"  # {"alphas", "val_worst_group", "val_mean_group"}
VAL_GROUPS_ATTR = "val_groups"  # {model: {group: accuracy}} on validation
TIMINGS_ATTR = "timings"
VERSIONS_ATTR = "versions"
DEVICE_ATTR = "device"
LOSS_HISTORY_ATTR = "loss_history"  # downsampled SAE training curves
