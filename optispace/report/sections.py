"""The Markdown of a study's report, section by section, from a built ``Report``.

``markdown(report, drawn)`` is the whole report.md: the question, the setup, a one-paragraph answer
generated from the numbers, then the tables, with a figure's image line where ``drawn`` names its
file (``optispace.report.write`` draws them).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

import polars as pl

from optispace.report import analyses, frames
from optispace.report.build import SENSITIVITY_WINDOW, TOP_FIGURE, TOP_TABLE, Report
from optispace.report.formats import fmt_bytes, fmt_duration, fmt_loss, fmt_lr, fmt_share, fmt_signed, table
from optispace.report.tables import NULL, code


def markdown(r: Report, drawn: Collection[str]) -> str:
    """report.md: every section that has something to show, in order."""
    sections = [
        heading(r),
        _setup(r),
        _answer(r),
        _versus_section(r),
        _structures_section(r),
        _sufficient_section(r),
        _map_section(r, drawn),
        _importance_section(r),
        _pareto_section(r, drawn),
        _sensitivity_section(r, drawn),
        _curves_section(r, drawn),
        _scaling_section(r, drawn),
        _unfinished_section(r),
        _files_section(r),
    ]
    return "\n".join(s for s in sections if s)


def heading(r: Report) -> str:
    question = r.info.question or "Which optimizer structures suffice?"
    return f"# {r.info.name}: {question}\n"


def _setup(r: Report) -> str:
    t = r.trials
    states = dict(t.group_by("state").len().sort("state").iter_rows())
    n_diverged = int(t["diverged"].sum())
    lines = [
        "## Setup\n",
        f"- Question: {r.info.question or NULL}",
        f"- Proxy: {r.info.proxy or NULL}; objectives: {', '.join(r.info.objectives) or NULL} "
        f"({', '.join(r.info.directions)})",
        *([f"- Regime: {r.info.regime}; its objective {r.info.objective} is what this report calls val loss"]
          if r.info.regime != "pretrain" else []),
        f"- Seeds per trial: {', '.join(map(str, r.info.seeds)) or NULL}; "
        f"divergence penalty: {_or_null(r.info.penalty, fmt_loss)}",
        f"- Tolerance: {r.tolerance:g} val loss ({r.tolerance_source})",
        f"- Trials: {len(t)} ({_state_counts(states, n_diverged)})",
        f"- Devices: {_distinct(t, 'device')}; corpus fingerprints: {_distinct(t, 'corpus_fingerprint')}",
        f"- Tokens per step: {_distinct(t, 'tokens_per_step')}; "
        f"training wall time over all trials: {fmt_duration(t['wall_time_s'].sum())}",
    ]
    if r.info.search:
        lines += [
            "",
            "<details><summary>The search file, as the study stored it</summary>\n",
            "```json",
            json.dumps(r.info.search, indent=2, sort_keys=True, default=str),
            "```\n",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


_STATE_WORDS = {"FAIL": "failed", "PRUNED": "pruned", "RUNNING": "still running", "WAITING": "waiting"}


def _state_counts(states: dict[str, int], n_diverged: int) -> str:
    finished = states.get("COMPLETE", 0) - n_diverged
    parts = [f"{finished} finished", f"{n_diverged} diverged"]
    parts += [f"{n} {_STATE_WORDS.get(s, s.lower())}" for s, n in states.items() if s != "COMPLETE"]
    return ", ".join(parts)


def _distinct(t: pl.DataFrame, column: str) -> str:
    values = t[column].drop_nulls().unique().sort().cast(pl.String).to_list()
    return ", ".join(values) if values else NULL


def _or_null(value: float | None, fmt: Callable[[float], str]) -> str:
    return NULL if value is None else fmt(value)


def _answer(r: Report) -> str:
    s = r.structures.filter(pl.col("best_loss").is_not_null())
    if s.is_empty():
        return (
            "## Answer\n\nNo trial has finished yet, so nothing can be said about which structures "
            "suffice; the trials so far are listed under *Trials that did not finish*.\n"
        )
    best = s.row(0, named=True)
    suff = s.filter(pl.col("sufficient"))
    border = suff.filter(pl.col("borderline"))["label"].to_list()
    sentences = [
        f"{len(s)} structure{'s' if len(s) != 1 else ''} finished. "
        f"The best, S1 ({code(best['structure'])}), reaches a val loss of "
        f"{fmt_loss(best['best_loss'])}{_spread(best)}.",
        f"{len(suff)} of {len(s)} suffice: they come within {r.tolerance:g} of it{_paired_note(s)}.",
    ]
    if border:
        sentences.append(
            f"{_names(border)} {'is' if len(border) == 1 else 'are'} borderline: the difference is within "
            "two standard errors of the tolerance."
        )
    sentences += _map_sentences(r.shares, len(suff))
    sentences += _memory_sentence(suff, best)
    if not r.importance.is_empty():
        top = r.importance.head(2).rows(named=True)
        named = " and ".join(f"`{p['param']}` ({fmt_share(p['importance'])})" for p in top)
        sentences.append(f"The parameters that most decide a low loss are {named} (PED-ANOVA importance).")
    return "## Answer\n\n" + " ".join(sentences) + "\n"


def _paired_note(s: pl.DataFrame) -> str:
    paired = s.filter(pl.col("paired_seeds") >= 2)
    if paired.is_empty():
        return ""
    largest = float(paired["difference_se"].max())
    return (
        f", judged on per-seed differences paired over shared seeds (standard error at most "
        f"{fmt_loss(largest)}, where the seed sd reaches {fmt_loss(float(s['seed_sd'].max()))})"
    )


def _names(labels: list[str], most: int = 6) -> str:
    more = f" and {len(labels) - most} more" if len(labels) > most else ""
    return ", ".join(labels[:most]) + more


def _spread(row: dict) -> str:
    if row["seed_sd"] is None:
        return f" on {row['n_seeds'] or 0} seed(s), so no seed spread is known"
    return f" (seed sd {fmt_loss(row['seed_sd'])} over {row['n_seeds']} seeds)"


def _map_sentences(shares: pl.DataFrame, n_sufficient: int) -> list[str]:
    """What every sufficient structure shares, and what none of them uses though it was tried."""
    if n_sufficient < 2 or shares.is_empty():
        return []
    always = shares.filter((pl.col("share") == 1.0) & (pl.col("explored_share") < 1.0))
    never = shares.filter((pl.col("share") == 0.0) & (pl.col("explored_using") > 0))
    out = []
    if not always.is_empty():
        out.append("Every sufficient structure uses " + _choices(always) + ".")
    if not never.is_empty():
        out.append(
            "None uses "
            + _choices(never.sort("gap", descending=True), with_gap=True)
            + ", though the search tried "
            + ("it." if len(never) == 1 else "them.")
        )
    return out


def _choices(rows: pl.DataFrame, most: int = 4, with_gap: bool = False) -> str:
    def name(r: dict) -> str:
        gap = f" (its best: {fmt_signed(r['gap'])} vs S1)" if with_gap and r["gap"] is not None else ""
        return f"{r['family']} `{r['choice']}` on {r['role']}{gap}"

    return _names([name(r) for r in rows.iter_rows(named=True)], most)


def _memory_sentence(suff: pl.DataFrame, best: dict) -> list[str]:
    known = suff.filter(pl.col("state_bytes").is_not_null())
    if known.is_empty() or best["state_bytes"] is None:
        return []
    cheap = known.sort("state_bytes", "rank").row(0, named=True)
    if cheap["label"] == best["label"]:
        bytes_text = fmt_bytes(best["state_bytes"])
        return [f"S1 is also the cheapest sufficient structure, at {bytes_text} of optimizer state."]
    ratio = best["state_bytes"] / cheap["state_bytes"] if cheap["state_bytes"] else None
    saving = _saving(ratio, fmt_bytes(best["state_bytes"]))
    return [
        f"The cheapest sufficient structure, {cheap['label']}, keeps {fmt_bytes(cheap['state_bytes'])} "
        f"of optimizer state{saving}."
    ]


def _saving(ratio: float | None, best_bytes: str) -> str:
    """How the cheapest sufficient structure's state compares with S1's; under 5% is no saving."""
    if not ratio:
        return ""
    if ratio < 1.05:
        return f", about as much as S1's {best_bytes}"
    return f", {ratio:.1f}x less than S1's {best_bytes}"


def _structures_section(r: Report) -> str:
    s = r.structures
    if s.is_empty():
        return ""
    shown = s.head(TOP_TABLE).select(
        "label",
        "best_loss",
        "difference",
        "difference_se",
        "sufficient",
        "n_finished",
        "n_diverged",
        "n_pruned",
        "n_failed",
        "n_seeds",
        "seed_sd",
        "state_bytes",
        *[frames.PROBE_PREFIX + name for name in r.probes],
        *[f"chain.{role}" for role in r.roles],
    )
    more = f"\n{len(s) - TOP_TABLE} more structures are in `trials.parquet`.\n" if len(s) > TOP_TABLE else ""
    probes = (
        " A *probe* column is the mean, over the structure's finished trials, of that probe's summary "
        "value on the first seed (see `optispace.probes`)."
        if r.probes
        else ""
    )
    return (
        "## Structures\n\n"
        "The best val loss of each structure over its tuned hyperparameters (mean over seeds), its "
        "difference to S1 (paired over shared seeds) with its standard error, and its trials. The "
        "best of many trials is biased low, so weigh a structure's loss with its number of trials."
        + probes
        + "\n\n"
        + table(shown)
        + more
    )


def _sufficient_section(r: Report) -> str:
    suff = r.structures.filter(pl.col("sufficient"))
    if suff.is_empty():
        return ""
    lr_columns = [f"lr.{role}" for role in r.roles if suff.get_column(f"lr.{role}", default=None) is not None]
    lr_columns = [c for c in lr_columns if suff[c].null_count() < len(suff)]
    shown = suff.select(
        "label",
        "best_trial",
        "best_loss",
        "difference",
        "difference_se",
        "paired_seeds",
        "borderline",
        "state_bytes",
        *lr_columns,
    )
    return (
        f"## Sufficient structures (within {r.tolerance:g} of S1)\n\n"
        "*borderline*: the difference is within two standard errors of the tolerance, so more seeds "
        "could change the verdict. lr columns are those of the best trial.\n\n" + table(shown)
    )


def _map_section(r: Report, drawn: Collection[str]) -> str:
    if r.shares.is_empty():
        return "## The map\n\nThe study sampled no categorical choice, so there is no map.\n"
    n_suff = int(r.structures["sufficient"].sum())
    head = (
        "## The map: which choices the sufficient structures use, and what each choice costs\n\n"
        f"Per role and primitive family, the share of the {n_suff} sufficient structures whose best "
        "trial used each choice, beside its share among all structures that finished (a choice far "
        "more common among the sufficient than among all is one that matters). The marginal effect "
        "of a choice is the cost of committing the role to it: the difference to S1 of the best "
        "structure using it (paired over seeds, with its standard error). A choice costs nothing "
        f"that matters when that is within the tolerance ({r.tolerance:g}); the best of few trials "
        "is biased high, so a large cost on a rarely tried choice is an upper bound.\n\n"
    )
    figures_md = ""
    if "map.png" in drawn:
        figures_md += "![Share of sufficient structures using each choice, per role](map.png)\n\n"
    if "marginal.png" in drawn:
        figures_md += "![Cost of committing each role to each choice](marginal.png)\n\n"
    return head + figures_md + table(r.shares)


def _importance_section(r: Report) -> str:
    if r.importance_note:
        return f"## Importance\n\nNot computed: {r.importance_note}.\n"
    by_role = analyses.importance_by_role(r.importance)
    return (
        "## Importance\n\n"
        "How much each sampled parameter decides whether a trial lands among the best (Optuna's "
        "PED-ANOVA, conditional parameters scored within the trials that sampled them; normalized "
        "to sum to 100%), then summed per role.\n\n" + table(r.importance) + "\n" + table(by_role)
    )


def _pareto_section(r: Report, drawn: Collection[str]) -> str:
    words = r.info.objective_words
    title = f"{words[0].upper()}{words[1:]} vs optimizer state"
    if r.front.is_empty():
        return f"## {title}\n\nNo finished trial recorded its state bytes.\n"
    figure = f"![{title} bytes, Pareto front highlighted](pareto.png)\n\n"
    front = r.front.join(r.structures.select("structure", "label"), on="structure", how="left").select(
        "label", "number", "val_loss", "state_bytes"
    )
    better = " (higher is better)" if r.info.maximize else ""
    return (
        f"## {title}: the Pareto front\n\n"
        f"The finished trials that no other trial beats on both {words}{better} and optimizer state "
        "bytes.\n\n" + (figure if "pareto.png" in drawn else "") + table(front)
    )


def _versus_section(r: Report) -> str:
    """Each ``[recipes]`` label at its best lr against adamw at its own, paired over seeds."""
    v = r.versus
    if v.is_empty():
        return ""
    from optispace.report.scaling import REFERENCE

    words, higher = r.info.objective_words, "higher" if r.info.maximize else "lower"
    rows = v.rows(named=True)
    ref = rows[0] if rows[0]["label"] == REFERENCE else None
    sentences = [_versus_sentence(row, ref, words, r.info.maximize) for row in rows if row is not ref]
    lead = (f"{REFERENCE} at its best lr ({fmt_lr(ref['best_lr'])}) reaches a {words} of "
            f"{fmt_loss(ref['best_loss'])}{_seed_note(ref)}. " if ref else f"{REFERENCE} has not finished. ")
    return (
        f"## Recipes against {REFERENCE}\n\n"
        f"Each recipe of the search at its best lr (by mean {words} over seeds; {higher} is better) "
        f"against {REFERENCE} at its own best lr: *Δ* is the recipe's {words} minus {REFERENCE}'s, seed "
        "by seed over the seeds both finished, averaged, with its standard error (sd / √n); *state* "
        "is the optimizer state bytes. The best of several lrs is biased toward luck, more so with "
        f"fewer seeds.{_metrics_note(v)}\n\n" + lead + " ".join(s for s in sentences if s) + "\n\n"
        + _paragraph(_recipe_edge_warning(v.rename({"label": "group"})))
        + table(v.rename({"label": "recipe label", "recipe": "trains", "lr_edge": "lr edge",
                          "difference": f"Δ vs {REFERENCE}"}))
    )


def _metrics_note(v: pl.DataFrame) -> str:
    """What the columns after *trial* are, when the regime measured more than its objective."""
    extra = v.columns[v.columns.index("best_trial") + 1:]
    if not extra:
        return ""
    said = "; ".join(f"*{name}*: {_METRIC_WORDS.get(name, 'as the run records it')}" for name in extra)
    return (" The last columns are the run's other final measurements, each the mean over that trial's "
            f"seeds ({said}).")


_METRIC_WORDS = {
    "forgetting": "the pretraining val loss at the end of fine-tuning minus at its start",
    "pretrain_val_loss_start": "the pretraining val loss of the starting checkpoint",
    "pretrain_val_loss_end": "the pretraining val loss after fine-tuning",
    "reward": "the held-out exact-match reward",
}


def _versus_sentence(row: dict, ref: dict | None, words: str, maximize: bool) -> str:
    """One label's verdict in words: better, worse or not resolved against adamw, and its state."""
    if row["difference"] is None or ref is None:
        return f"{row['label']} shares no finished seed with adamw, so no paired difference is known."
    d, se = row["difference"], row["difference_se"]
    better = (d > 0) == maximize
    resolved = se is not None and abs(d) > 2 * se
    verdict = (f"{'better' if better else 'worse'} by {fmt_loss(abs(d))}" if resolved
               else f"within two standard errors of it ({fmt_signed(d)})")
    se_text = f", se {fmt_loss(se)}" if se is not None else ", so no standard error"
    state = ""
    if row["state_bytes"] is not None and ref["state_bytes"]:
        state = f", with {row['state_bytes'] / ref['state_bytes']:.3g}x adamw's optimizer state"
    return (f"{row['label']} (lr {fmt_lr(row['best_lr'])}) is {verdict} in {words} over "
            f"{row['paired_seeds']} paired seed{'s' if row['paired_seeds'] != 1 else ''}{se_text}{state}.")


def _seed_note(row: dict) -> str:
    return f" (seed sd {fmt_loss(row['seed_sd'])})" if row["seed_sd"] is not None else ""


def _sensitivity_section(r: Report, drawn: Collection[str]) -> str:
    sens = r.top_sensitivity
    if sens.is_empty():
        return ""
    figure = "![Val loss vs lr per role for the top structures](sensitivity.png)\n\n"
    return (
        "## Learning-rate sensitivity\n\n"
        f"Val loss against each role's lr for the top {TOP_FIGURE} structures (roles that always share "
        "an lr, such as tied ones, share a panel). The basin is the lr "
        f"range whose trials stay within {r.tolerance:g} of the structure's best; its width in "
        "decades is a lower bound (only sampled lrs count), and a wide basin means the structure is "
        "easy to tune.\n\n"
        f"The y axis spans {SENSITIVITY_WINDOW} tolerances above the least loss.\n\n"
        + _edge_warning(sens)
        + (figure if "sensitivity.png" in drawn else "")
        + table(
            sens.select(
                "label", "roles", "n_trials", "best_lr", "edge", "basin_lo", "basin_hi", "basin_decades",
                "diverged_lo",
            )
        )
    )


def _edge_warning(sens: pl.DataFrame) -> str:
    """A sentence naming the top structures whose best lr sits at an edge of the searched range."""
    edged = sens.filter(pl.col("edge").is_not_null())
    if edged.is_empty():
        return ""
    cases = ", ".join(f"{label} ({roles}, {edge})" for label, roles, edge in edged.select(
        "label", "roles", "edge").iter_rows())
    return (
        f"**The best lr sits at an edge of the searched range** for {cases}: the optimum may lie "
        "beyond what the search tried; widen that lr range in the search file and run again.\n\n"
    )


def _recipe_edge_warning(best: pl.DataFrame) -> str:
    """A sentence naming the recipes whose best lr is the least or greatest of the lrs they tried."""
    edged = best.filter(pl.col("lr_edge").is_not_null()).unique(["group", "lr_edge"], maintain_order=True)
    if edged.is_empty():
        return ""
    cases = ", ".join(f"{group} ({edge})" for group, edge in edged.select("group", "lr_edge").iter_rows())
    return (
        f"**The best lr is at an end of the lrs tried** for {cases}, somewhere in this table: the "
        "optimum may lie beyond, so that recipe's loss is an upper bound; add lrs past that end and run "
        "again.\n"
    )


def _paragraph(text: str) -> str:
    """``text`` as a markdown paragraph (a blank line after it), or nothing."""
    return f"{text}\n" if text else ""


def _curves_section(r: Report, drawn: Collection[str]) -> str:
    if r.best_curves.is_empty():
        return ""
    figure = "![Val loss vs tokens of the best trial of each top structure](curves.png)\n\n"
    summary = (
        r.best_curves.group_by("label", "number", maintain_order=True)
        .agg(evaluations=pl.len(), last_step=pl.col("step").max(), last_loss=pl.col("val_loss").last())
        .select("label", "number", "evaluations", "last_step", "last_loss")
    )
    return (
        "## Loss curves\n\n"
        "The val loss the best trial of each top structure reported during training. The search "
        "reports one seed's evaluations, so the last point can differ from the best loss, a mean "
        "over seeds.\n\n"
        + (figure if "curves.png" in drawn else "")
        + table(summary)
    )


def _scaling_section(r: Report, drawn: Collection[str]) -> str:
    """Best loss, best lr and the paired gap to adamw against each swept scale axis, and the fits."""
    if r.scale_best.is_empty():
        return ""
    from optispace.report.scaling import REFERENCE

    rule = (r.info.search.get("scaling") or {}).get("lr_rule", "plain")
    figure = "![Best loss, best lr and gap to adamw against each scale axis](scaling.png)\n"
    parts = [
        "## Scaling\n\n"
        f"The study swept {', '.join(r.scale_axes)}. Per recipe or structure and per value of an axis: "
        "the best finished trial over every value of the other axes (*best loss*: its mean val loss "
        "over seeds; *seed sd*: the sample sd of its per-seed losses), its lr (the matrix role's, as "
        f"sampled: lr rule `{rule}`"
        + (", under which the matrix trains at lr × base_dim / dim" if rule == "mup" else "")
        + "), and the paired gap to "
        f"{REFERENCE} (per seed, loss minus {REFERENCE}'s at the same value; mean ± sd over seeds, "
        "error bars in the figure). A best lr that stays put as an axis grows is an lr that "
        "transfers. The fit is the power law loss = a · x^b by least squares in log-log space; "
        "*r²* is the share of the variance of log loss it explains (with 2 points it is 1 by "
        "construction).\n\n" + _paragraph(_recipe_edge_warning(r.scale_best))
        + (figure if "scaling.png" in drawn else "")
    ]
    best = r.scale_best.join(r.scale_gaps, on=["group", "axis", "value"], how="left")
    for axis in r.scale_axes:
        rows = best.filter(pl.col("axis") == axis)
        if rows.is_empty():
            continue
        shown = rows.select(
            "group", pl.col("value").alias(axis), "best_loss", "seed_sd", "best_lr",
            pl.col("lr_edge").alias("lr edge"), "n_trials",
            "best_trial", pl.col("gap").alias("gap to adamw"), pl.col("gap_sd").alias("gap sd"),
        )
        parts.append(f"### Against {axis}\n\n" + table(shown))
    if not r.scale_points.is_empty():
        parts.append(_points_part(r))
    if not r.scale_fits.is_empty():
        parts.append("### Power-law fits of the best loss\n\n" + table(r.scale_fits))
    return "\n".join(parts)


def _points_part(r: Report) -> str:
    """The paired gap to adamw at each point of the grid, not the best over the other axes."""
    from optispace.report.scaling import REFERENCE

    shown = r.scale_points.rename({f"scale.{axis}": axis for axis in r.scale_axes}).rename(
        {"reference_lr": f"{REFERENCE} best lr", "gap": f"gap to {REFERENCE}", "gap_sd": "gap sd",
         "gap_se": "gap se"}
    )
    return (
        f"### Gap to {REFERENCE} at each point\n\n"
        f"At each point of the grid, each group's best trial there against {REFERENCE}'s best trial "
        "there, paired by seed (*gap se*: gap sd / sqrt(paired seeds)).\n\n" + table(shown)
    )


def _unfinished_section(r: Report) -> str:
    rest = r.trials.filter((pl.col("state") != "COMPLETE") | pl.col("diverged"))
    if rest.is_empty():
        return ""
    last = r.curves.group_by("number").agg(last_step=pl.col("step").max())
    named = (
        rest.join(last, on="number", how="left")
        .join(r.structures.select("structure", "label"), on="structure", how="left")
        .with_columns(state=pl.when("diverged").then(pl.lit("DIVERGED")).otherwise("state"))
    )
    shown = (
        named.filter(pl.col("state") != "PRUNED")
        .select("number", "state", "failure", "failure_step", "last_step", "label")
        .sort("number")
    )
    text = (
        "## Trials that did not finish\n\n"
        "Diverged trials count as COMPLETE for Optuna (with the penalty as their value); here they "
        "are named as such. *last step*: the last evaluation reported.\n\n"
    )
    return text + (table(shown) if not shown.is_empty() else "") + _pruned_summary(named)


def _pruned_summary(named: pl.DataFrame) -> str:
    """Pruned trials counted by the last step they reported (a hyperband study prunes most trials)."""
    pruned = named.filter(pl.col("state") == "PRUNED")
    if pruned.is_empty():
        return ""
    by_step = pruned.group_by("last_step").agg(n_pruned=pl.len()).sort("last_step", nulls_last=True)
    return (
        f"\nThe pruner stopped {len(pruned)} trial{'s' if len(pruned) != 1 else ''} on the first seed's "
        "curve, counted here by the last step they reported (each one is a row of "
        "`trials.parquet`).\n\n" + table(by_step)
    )


def _files_section(r: Report) -> str:
    return (
        "## Files\n\n"
        f"- `trials.parquet`: one row per trial ({len(r.trials)} rows): state, failure, chains, lrs, "
        "every sampled parameter (`param.<name>`), objective values, state bytes per role, seeds and "
        "per-seed losses, tokens/s, wall time, device, corpus fingerprint"
        + (", each probe's value (`probe.<name>`) and results (`probes`, JSON)" if r.probes else "")
        + ".\n"
        f"- `curves.parquet`: one row per reported evaluation ({len(r.curves)} rows): trial number, "
        "step, tokens, val loss.\n"
        "- Regenerate with `optispace report --study "
        f"{r.info.name}`; the same study gives the same bytes.\n"
    )
