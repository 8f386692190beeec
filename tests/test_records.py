"""What a trial stores reads back as it was written, and older layouts still read."""

from __future__ import annotations

import optuna
import torch
from optuna.trial import TrialState

from hpo.params import EditConfig
from hpo.plans import EditPlan, Removal
from hpo.results import Edit, GroupMetrics, Provenance, TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.storage import attrs
from hpo.storage.records import (
    Confirmation,
    ConfirmationRun,
    ConfirmedBest,
    Spread,
    TrialWeights,
    read_confirmations,
    read_confirmed_best,
    read_trial,
    write_confirmation,
    write_confirmed_best,
    write_provenance,
    write_result,
)
from hpo.storage.records.trials import edit_attrs


def a_result() -> TrialResult:
    groups = {"a": 0.5, "b": None}
    metrics = GroupMetrics(0.5, 0.5, 0.6, groups)
    return TrialResult(
        task="colored_mnist",
        objectives={"worst_group": 0.5, "mean_group": 0.5, "overall": 0.6},
        errors={"faithfulness_error": 0.01, "prediction_change": 0.0},
        models={"original": {"val": metrics}, "debiased": {"val": metrics}},
        edit=Edit(
            plan=EditPlan(
                removal={
                    "fc1": Removal([0, 3], [0.5, -0.25]),
                    "fc2": Removal([1], [1.0], bias_shift=[0.5, -0.5]),
                },
                strategy="fitted",
                labels="group",
                compensate_bias=True,
            ),
            alpha=0.7,
            alpha_curve={"alphas": [0.0, 0.7], "val_worst_group": [0.1, 0.5]},
        ),
        timings={"sae_training": 1.5},
        provenance=Provenance(
            params={},
            task={},
            seed=3,
            task_seed=0,
            data_sha256="abc",
            base_model="key",
            versions={"torch": "x"},
            device="cpu",
            torch_threads=1,
        ),
    )


def stored(result: TrialResult) -> optuna.trial.FrozenTrial:
    study = optuna.create_study()
    trial = study.ask()
    write_provenance(trial, seed=3, data_sha256="abc", base_model="key", device="cpu")
    write_result(trial, result, {"step": [1, 2], "recon": [2.0, 1.0]})
    study.tell(trial, 0.5)
    return study.trials[0]


def test_a_trial_records_its_device_before_it_trains() -> None:
    """A pruned trial never reaches write_result: it still says where it ran."""
    study = optuna.create_study()
    trial = study.ask()
    write_provenance(trial, seed=3, data_sha256="abc", base_model="key", device="cuda:1")
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert read_trial(study.trials[0]).device == "cuda:1"


def test_a_stored_result_reads_back_typed() -> None:
    result = a_result()
    record = read_trial(stored(result))
    assert record.values == result.values()
    assert record.edit == result.edit
    assert record.val_groups == {
        "original": {"a": 0.5, "b": None},
        "debiased": {"a": 0.5, "b": None},
    }
    assert (record.seed, record.data_sha256, record.base_model) == (3, "abc", "key")
    assert record.versions == {"torch": "x"} and record.device == "cpu"
    assert record.loss_history == {"step": [1, 2], "recon": [2.0, 1.0]}


def test_an_edit_is_stored_under_the_attr_names_and_its_json_uses_them() -> None:
    """One home for stored names: `edit_attrs` writes each under its constant; the JSON
    of `hpo trial --json` uses the same names."""
    edit = a_result().edit
    names = {
        attrs.LAYER_ATTR,
        attrs.ALPHA_ATTR,
        attrs.ABLATED_COMPONENTS_ATTR,
        attrs.REMOVED_FRACTIONS_ATTR,
        attrs.SELECTION_ATTR,
        attrs.ALPHA_CURVE_ATTR,
        attrs.LABELS_ATTR,
        attrs.COMPENSATE_BIAS_ATTR,
        attrs.BIAS_SHIFT_ATTR,
    }
    assert set(edit_attrs(edit)) == names
    assert set(edit.to_json()) == names


def test_trials_stored_before_layers_and_selection_still_read() -> None:
    old = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=0.4,
        params={"ablate": "attribution"},
        distributions={
            "ablate": optuna.distributions.CategoricalDistribution(["attribution", "both"])
        },
        user_attrs={"alpha": 0.5, "ablated_components": [2, 5], "worst_group": 0.4},
    )
    record = read_trial(old, default_layer="fc1")
    assert record.edit.components == {"fc1": [2, 5]} and record.edit.layer == "fc1"
    assert record.edit.strategy == "attribution"  # the trial's sampled strategy
    assert record.edit.labels == "concept"  # stored before regimes: the strategy's own
    assert record.values == {"worst_group": 0.4}


def test_damaged_attrs_read_as_missing_never_raise() -> None:
    bad = optuna.trial.create_trial(
        state=TrialState.COMPLETE,
        value=0.0,
        user_attrs={"alpha": [1], "ablated_components": "x", "val_groups": 3, "seed": 1},
    )
    record = read_trial(bad)
    assert record.edit is not None and record.edit.components == {}
    assert record.val_groups == {} and record.seed == 1


def test_weights_round_trip_and_older_payloads_read() -> None:
    torch.manual_seed(0)
    sae = FaithfulSAE(4, 3, 6, 2)
    weights = TrialWeights.of({"fc1": sae}, a_result(), {"fc1.weight": torch.ones(3, 4)})
    config = EditConfig(ablate="both", ablate_bias=True)
    again = TrialWeights.from_payload(weights.to_payload(), default_layer="unused", edit=config)
    assert again.plan == a_result().edit.plan
    assert torch.equal(again.saes["fc1"].state["encoder"], sae.state_dict()["encoder"])
    older = {"sae": sae.state_dict(), "sae_config": sae.config()}  # one SAE, no removal
    legacy = TrialWeights.from_payload(older, default_layer="fc1", edit=config)
    assert set(legacy.saes) == {"fc1"} and legacy.plan is None and legacy.debiased is None
    # stored before plans: the removal alone, chosen by the trial's strategy
    removals = {"saes": {"fc1": older}, "removal": {"fc1": {"components": [2], "fractions": None}}}
    plan = TrialWeights.from_payload(removals, default_layer="fc1", edit=config).plan
    assert plan == EditPlan({"fc1": Removal([2])}, "both", "concept", compensate_bias=True)


def test_confirmations_round_trip_through_the_study() -> None:
    study = optuna.create_study()
    record = Confirmation(
        seeds=[1000, 1001],
        new_base_model=False,
        diverged=0,
        val={"worst_group": Spread.of([0.5, 0.7])},
        test_worst_group=Spread.of([0.4, 0.6]),
        runs=[ConfirmationRun(1000, {"worst_group": 0.5}, {}, {"debiased": 0.4}, (0.5, "oracle"))],
    )
    write_confirmation(study, 7, record)
    write_confirmed_best(study, ConfirmedBest(7, "worst_group", 0.6, 2, 1))
    assert read_confirmations(study) == {7: record}
    assert read_confirmed_best(study) == ConfirmedBest(7, "worst_group", 0.6, 2, 1)
    assert study.user_attrs[attrs.CONFIRMATION_ATTR]["7"]["val"]["worst_group"]["mean"] == 0.6
