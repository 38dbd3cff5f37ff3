"""Analyses on studies whose answer is known (optispace.report.synthetic.known_study)."""

import math

import optuna
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from optispace.report import analyses, frames
from optispace.report.synthetic import KNOWN_TOLERANCE, known_trial, make_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def params(study):
    return frames.params_frame(study.trials)


@pytest.fixture(scope="module")
def suff(trials):
    return analyses.sufficiency(analyses.structures(trials), KNOWN_TOLERANCE)


def by_embed_and_matrix(frame):
    """Name each row by its known structure, from its embed and matrix chains."""
    names = {
        ("momentum(0.9) > second_moment(full)", "momentum(0.9) > second_moment(full)"): "adam",
        ("second_moment(factored)", "momentum(0.9) > second_moment(full)"): "ember",
        ("momentum(0.9) > second_moment(full)", "momentum(0.95) > orthogonalize"): "muon",
        ("identity", "momentum(0.9) > second_moment(full)"): "sgd_embed",
        ("second_moment(factored)", "momentum(0.95) > orthogonalize"): "unstable",
    }
    return {names[r["chain.embed"], r["chain.matrix"]]: r for r in frame.iter_rows(named=True)}


def test_structures_best_loss_counts_and_divergence(suff):
    rows = by_embed_and_matrix(suff)
    assert [r["label"] for r in suff.iter_rows(named=True)] == ["S1", "S2", "S3", "S4", "S5"]
    assert rows["adam"]["label"] == "S1" and rows["adam"]["best_loss"] == pytest.approx(3.300)
    assert rows["ember"]["best_loss"] == pytest.approx(3.305)
    assert rows["muon"]["best_loss"] == pytest.approx(3.318)
    assert rows["adam"]["best_trial"] == 1  # lr 3e-3, the second adam trial
    assert (rows["adam"]["n_trials"], rows["adam"]["n_finished"], rows["adam"]["n_failed"]) == (4, 3, 1)
    assert rows["sgd_embed"]["n_pruned"] == 1 and rows["ember"]["n_running"] == 1
    assert rows["unstable"]["divergence_rate"] == pytest.approx(2 / 3)
    assert rows["adam"]["divergence_rate"] == 0.0
    assert rows["adam"]["seed_sd"] == pytest.approx(0.02) and rows["adam"]["n_seeds"] == 3


def test_sufficiency_marks_the_known_structures(suff):
    rows = by_embed_and_matrix(suff)
    assert {n for n, r in rows.items() if r["sufficient"]} == {"adam", "ember", "muon"}
    assert {n for n, r in rows.items() if r["borderline"]} == {"muon"}
    assert rows["muon"]["difference"] == pytest.approx(0.018)
    assert rows["muon"]["difference_se"] == pytest.approx(0.006 / math.sqrt(3))
    # Paired over the shared seeds the difference is far tighter than the seed spread.
    assert rows["ember"]["difference_se"] < rows["ember"]["seed_sd"] / 10
    assert rows["ember"]["paired_seeds"] == 3


def test_unpaired_structures_fall_back_to_welch():
    one = known_trial("adam", 3e-3)
    other = known_trial("ember", 3e-3, seeds=(7, 8, 9))
    structs = analyses.structures(frames.trials_frame([one, other]))
    row = analyses.sufficiency(structs, 0.02).row(1, named=True)
    assert row["paired_seeds"] == 0
    assert row["difference"] == pytest.approx(0.005)
    assert row["difference_se"] == pytest.approx(math.sqrt(row["seed_sd"] ** 2 / 3 + 0.02**2 / 3))


def test_sufficiency_with_nothing_finished():
    running = known_trial("adam", 3e-3, state=optuna.trial.TrialState.RUNNING)
    suff = analyses.sufficiency(analyses.structures(frames.trials_frame([running])), 0.02)
    assert suff["sufficient"].to_list() == [False] and suff["best_loss"].to_list() == [None]


def test_choice_map_shares(suff, trials, params):
    shares = analyses.choice_map(suff, trials, params)
    got = {
        (r["role"], r["family"], r["choice"]): (r["share"], r["explored_share"])
        for r in shares.iter_rows(named=True)
    }
    assert got[("embed", "second_moment", "full")] == (pytest.approx(2 / 3), pytest.approx(2 / 5))
    assert got[("embed", "second_moment", "factored")] == (pytest.approx(1 / 3), pytest.approx(2 / 5))
    assert got[("embed", "second_moment", "none")] == (0.0, pytest.approx(1 / 5))
    assert got[("matrix", "orthogonalize", "yes")] == (pytest.approx(1 / 3), pytest.approx(2 / 5))
    assert shares["role"].to_list() == ["embed"] * 3 + ["matrix"] * 2


def test_choice_map_marginal_effect_is_the_best_structure_using_the_choice(suff, trials, params):
    shares = analyses.choice_map(suff, trials, params)
    got = {(r["role"], r["choice"]): (r["best_using"], r["gap"]) for r in shares.iter_rows(named=True)}
    # embed `factored` is used by ember (+0.005) and the unstable structure (+0.23): the best counts.
    assert got[("embed", "factored")] == ("S2", pytest.approx(0.005))
    assert got[("embed", "none")] == ("S4", pytest.approx(0.1))
    assert got[("embed", "full")] == ("S1", 0.0)
    assert got[("matrix", "yes")] == ("S3", pytest.approx(0.018))
    row = shares.filter(pl.col("choice") == "yes").row(0, named=True)
    assert row["gap_se"] == pytest.approx(0.006 / math.sqrt(3))


def test_choice_map_leaves_an_unused_choice_without_a_marginal_effect(trials, params):
    adam_only = trials.filter(pl.col("chain.embed").str.starts_with("momentum"))
    suff = analyses.sufficiency(analyses.structures(adam_only), KNOWN_TOLERANCE)
    shares = analyses.choice_map(suff, adam_only, params)
    row = shares.filter((pl.col("role") == "embed") & (pl.col("choice") == "none")).row(0, named=True)
    assert (row["explored_using"], row["best_using"], row["gap"], row["gap_se"]) == (0, None, None, None)


def test_importance_covers_conditional_parameters(study, params):
    imp, note = analyses.importance(study, params)
    assert note is None
    assert set(imp["param"]) == {
        "embed.lr",
        "matrix.lr",
        "embed.second_moment",
        "matrix.orthogonalize",
        "matrix.ns_steps",
    }
    assert imp["importance"].sum() == pytest.approx(1.0)
    assert imp["importance"].to_list() == sorted(imp["importance"], reverse=True)
    by_role = analyses.importance_by_role(imp)
    assert by_role["role"].to_list() == ["embed", "matrix"]


def test_importance_needs_enough_trials(params):
    small = optuna.create_study(directions=["minimize", "minimize"])
    small.add_trials([known_trial("adam", lr) for lr in (1e-3, 3e-3)])
    imp, note = analyses.importance(small, params)
    assert imp.is_empty() and "too few finished trials (2" in note


def dominated(a, b):
    """b dominates a."""
    return b[0] <= a[0] and b[1] <= a[1] and (b[0] < a[0] or b[1] < a[1])


@given(
    st.lists(st.tuples(st.integers(3, 6).map(lambda x: x / 2), st.integers(0, 4)), min_size=1, max_size=25),
    st.booleans(),
)
def test_pareto_front_is_exactly_the_non_dominated_trials(points, maximize):
    frame = pl.DataFrame(
        {
            "number": list(range(len(points))),
            "structure": ["s"] * len(points),
            "val_loss": [p[0] for p in points],
            "state_bytes": [p[1] for p in points],
        }
    )
    front = analyses.pareto_front(frame, maximize)
    costs = [(-p[0] if maximize else p[0], p[1]) for p in points]  # a reward: more is better
    expected = {i for i, p in enumerate(costs) if not any(dominated(p, q) for q in costs)}
    assert set(front["number"]) == expected
    assert front.equals(front.sort("state_bytes", "val_loss", "number", descending=[False, maximize, False]))


def test_pareto_front_of_the_known_study(trials):
    front = analyses.pareto_front(trials)
    assert front["state_bytes"].to_list() == [558_260, 594_000, 598_260, 1_106_000]
    assert front["val_loss"].to_list() == pytest.approx([3.53, 3.40, 3.305, 3.300])


def test_lr_basin_and_divergence(trials, suff):
    sens = analyses.lr_sensitivity(trials, suff, KNOWN_TOLERANCE)
    s1 = sens.filter((pl.col("label") == "S1") & (pl.col("role") == "embed")).row(0, named=True)
    assert (s1["basin_lo"], s1["basin_hi"]) == (3e-3, 1e-2)
    assert s1["basin_decades"] == pytest.approx(math.log10(1e-2 / 3e-3))
    s1_matrix = sens.filter((pl.col("label") == "S1") & (pl.col("role") == "matrix")).row(0, named=True)
    assert (s1_matrix["basin_lo"], s1_matrix["basin_hi"]) == (3e-2, 1e-1)
    s5 = sens.filter(pl.col("label") == "S5").row(0, named=True)
    assert s5["diverged_lo"] == 3e-3 and s5["basin_decades"] == 0.0
    assert sens["role"].to_list()[:2] == ["embed", "matrix"]


def test_best_lr_at_the_edge_of_the_searched_range_is_flagged(trials, suff):
    # S1's best embed lr is 3e-3 (the known study): at the low edge of [3e-3, 1e-1], inside [1e-4, 1].
    at_edge = analyses.lr_sensitivity(trials, suff, KNOWN_TOLERANCE, {"embed": (3e-3, 1e-1)})
    inside = analyses.lr_sensitivity(trials, suff, KNOWN_TOLERANCE, {"embed": (1e-4, 1.0)})
    unknown = analyses.lr_sensitivity(trials, suff, KNOWN_TOLERANCE)
    pick = (pl.col("label") == "S1") & (pl.col("role") == "embed")
    assert at_edge.filter(pick)["best_lr"].item() == 3e-3
    assert at_edge.filter(pick)["edge"].item() == "low"
    assert inside.filter(pick)["edge"].item() is None
    assert unknown["edge"].null_count() == len(unknown)


@pytest.mark.parametrize(
    ("best", "edge"),
    [(1e-4, "low"), (1.2e-4, "low"), (1e-3, None), (0.08, "high"), (0.1, "high"), (None, None)],
)
def test_lr_edge_is_the_outer_share_of_the_log_range(best, edge):
    assert analyses.lr_edge(best, 1e-4, 1e-1) == edge


def test_lr_ranges_follow_ties_and_skip_fixed_lrs():
    search = {"roles": {"embed": {"lr": [3e-4, 0.3]}, "head": {"tie": "embed"}, "vector": {"lr": 3e-3}}}
    assert analyses.lr_ranges(search) == {"embed": (3e-4, 0.3), "head": (3e-4, 0.3)}
    assert analyses.lr_ranges(None) == {}


def test_best_curves_are_complete(study, suff):
    curves = frames.curves_frame(study.get_trials(deepcopy=False))
    best = analyses.best_curves(curves, suff, top=2)
    assert best["label"].unique(maintain_order=True).to_list() == ["S1", "S2"]
    assert best.filter(pl.col("label") == "S1")["step"].to_list() == [100, 200, 300, 400, 500]
    assert best.filter(pl.col("label") == "S1")["val_loss"][-1] == pytest.approx(3.300)


def test_roles_that_share_an_lr_share_a_sensitivity_row():
    tied = [known_trial("adam", lr) for lr in (1e-3, 3e-3)]
    for t in tied:
        t.user_attrs["lr.head"] = t.user_attrs["lr.embed"]
    trials = frames.trials_frame(tied)
    assert analyses.lr_groups(trials) == {"embed": ["embed", "head"], "matrix": ["matrix"]}
    sens = analyses.lr_sensitivity(trials, analyses.structures(trials), 0.02)
    assert sens.select("role", "roles").rows() == [("embed", "embed, head"), ("matrix", "matrix")]


losses = st.lists(st.floats(3.0, 4.0), min_size=3, max_size=3)


@given(st.lists(losses, min_size=1, max_size=6), st.floats(0.0, 0.5), st.floats(0.0, 0.5))
def test_sufficiency_is_the_paired_difference_within_the_tolerance(per_structure, tol_a, tol_b):
    made = [make_trial({"embed": f"s{i}"}, losses, seeds=(0, 1, 2)) for i, losses in enumerate(per_structure)]
    structs = analyses.structures(frames.trials_frame(made))
    low, high = sorted((tol_a, tol_b))
    strict, loose = analyses.sufficiency(structs, low), analyses.sufficiency(structs, high)
    assert strict["sufficient"][0]  # the best structure always suffices
    assert set(strict.filter("sufficient")["structure"]) <= set(loose.filter("sufficient")["structure"])
    best = per_structure[int(strict["structure"][0].removeprefix("embed: s"))]
    for row in strict.iter_rows(named=True):
        mine = per_structure[int(row["structure"].removeprefix("embed: s"))]
        paired = sum(a - b for a, b in zip(mine, best, strict=True)) / 3
        assert row["difference"] == pytest.approx(paired, abs=1e-12)
        assert row["sufficient"] == (row["difference"] <= low)
