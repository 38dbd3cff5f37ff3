"""What ``--recipe`` names: a recipe, a structure written as chain text per role, or a trial of a study.

- ``ember``: a named recipe (``optispace recipes`` lists them); ``ember(bias_correction=row)`` or
  ``ember(lr=3e-3, bias_correction=row)``: with some of its hyperparameters given (values written
  as in chain text; an lr given here yields to ``--lr``);
- ``embed: second_moment(factored) | head: sign | matrix: momentum(0.9) > orthogonalize | vector: sign``:
  one chain per role, in the form a trial's ``structure`` attribute is written (every role present
  in the model needs one; the lr comes from ``--lr``);
- ``study:NAME#N``: trial ``N`` of study ``NAME`` as trained: its ``trained_chain.<role>`` chains
  and ``lr.<role>`` lrs, and the study's training settings (tier, budget, data, schedule,
  evaluation: what the search file's ``[proxy]`` gave each trial); ``study:NAME`` is the study's best
  trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optispace.chain import parse_chain
from optispace.errors import UserError
from optispace.roles import ROLES, check_role

if TYPE_CHECKING:
    from optispace.search.space import Configuration

STUDY_PREFIX = "study:"


@dataclass(frozen=True)
class RecipeArgument:
    """A parsed ``--recipe``: what ``TrainConfig(recipe=..., role_lr=...)`` takes, and where from."""

    recipe: str | dict[str, str]
    role_lr: dict[str, float] = field(default_factory=dict)
    source: str = ""
    #: ``TrainConfig`` keyword arguments the study trained its trials with (seed and probes excepted),
    #: or the hyperparameters (and lr) of a recipe written ``ember(bias_correction=row)``.
    settings: dict[str, Any] = field(default_factory=dict)


def parse_structure(text: str) -> dict[str, str]:
    """``role: chain | role: chain ...`` -> {role: canonical chain text}; ``ValueError`` naming the part."""
    out: dict[str, str] = {}
    for part in text.split("|"):
        role, sep, chain = part.partition(":")
        role = role.strip()
        if not sep:
            raise ValueError(f"structure part {part.strip()!r} is not 'role: chain'")
        check_role(role, "structure")
        if role in out:
            raise ValueError(f"structure: role {role!r} is given twice")
        try:
            out[role] = str(parse_chain(chain.strip()))
        except ValueError as e:
            raise ValueError(f"structure, role {role}: {e}") from None
    return out


def recipe_argument(text: str, storage_url: str | None = None, data: str | None = None) -> RecipeArgument:
    """Parse ``--recipe`` (module docstring); ``UserError`` for every mistake. ``data``: the caller
    gives its own data, so a study's data path is not checked (it may not exist here)."""
    if text.startswith(STUDY_PREFIX):
        return _from_trial(text.removeprefix(STUDY_PREFIX), storage_url, data)
    if "(" in text and ":" not in text:
        return _variant(text)
    if ":" not in text:
        return RecipeArgument(text, source=f"recipe {text}")
    try:
        return RecipeArgument(parse_structure(text), source="structure")
    except ValueError as e:
        raise UserError(f"--recipe: {e}") from None


def _variant(text: str) -> RecipeArgument:
    """A named recipe with hyperparameters (and perhaps its lr) given: ``ember(bias_correction=row)``."""
    from optispace.recipes import parse_variant

    try:
        variant = parse_variant(text)
    except ValueError as e:
        raise UserError(f"--recipe: {e}") from None
    lr = {} if variant.lr is None else {"lr": variant.lr}
    return RecipeArgument(variant.recipe.name, source=f"recipe {text.strip()}",
                          settings={"hyperparameters": variant.hyperparameters, **lr})


def _from_trial(ref: str, storage_url: str | None, data: str | None) -> RecipeArgument:
    """The chains and lrs trial ``NAME#N`` (or the best trial of ``NAME``) trained."""
    import optuna

    from optispace.search.space import Configuration, Draw
    from optispace.search.storage import default_url, open_existing_storage
    from optispace.trial import read

    name, sep, number = ref.partition("#")
    if not name or (sep and not number.isdigit()):
        raise UserError(f"--recipe: study:{ref} is not study:NAME or study:NAME#TRIAL (a trial number)")
    url = storage_url or default_url()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=open_existing_storage(url))
    except KeyError:
        raise UserError(f"--recipe: no study {name!r} in {url}; pass --storage where it lives") from None
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if sep:
        trial = trials.get(int(number))
        if trial is None:
            raise UserError(f"--recipe: study {name!r} has no trial {number} (it has {len(trials)} trials)")
    else:
        trial = _best(study, name)
    attrs = trial.user_attrs
    missing = [role for role in ROLES if f"trained_chain.{role}" not in attrs or f"lr.{role}" not in attrs]
    if missing:
        raise UserError(f"--recipe: trial {trial.number} of study {name!r} records no trained chain or lr "
                        f"for {', '.join(missing)}; it was not made by `optispace search`")
    configuration = Configuration({role: Draw(attrs.get(f"chain.{role}", ""), attrs[f"trained_chain.{role}"],
                                              float(attrs[f"lr.{role}"]), {}) for role in ROLES})
    search = study.user_attrs.get("search")
    point = {axis: int(v) for axis, v in read(trial).scale.items()}
    settings = _settings(search, name, configuration, data, point) if search else {}
    source = f"trial {trial.number} of study {name!r}"
    role_lr = settings.pop("role_lr", configuration.role_lr)
    return RecipeArgument(configuration.recipe, role_lr, source, settings)


def _settings(search: dict[str, Any], name: str, configuration: Configuration,
              data: str | None, point: dict[str, int]) -> dict[str, Any]:
    """The TrainConfig keyword arguments the trial had at its scale ``point`` (lrs as trained: under
    a muP rule the matrix lr is scaled), but for seed, probes and recipe, and the trial's ranks
    (``nproc``: a retrain's processes are its own ``--nproc``; the losses do not depend on them)."""
    from optispace.search.objective import train_config
    from optispace.search.spec import parse_search_data

    if data is not None:  # the caller's data replaces the study's (a path that may not exist here)
        search = {**search, "proxy": {k: v for k, v in search.get("proxy", {}).items() if k != "data"}}
    spec = parse_search_data(search, f"study {name!r} (its search file)")
    config = train_config(spec, configuration, spec.seeds[0], point)
    return {k: v for k, v in config.items() if k not in ("seed", "probes", "recipe", "lr", "nproc")}


def _best(study, name: str):
    """The study's best finished trial (lowest first objective among COMPLETE trials without failure)."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and not t.user_attrs.get("failure")]
    if not done:
        raise UserError(f"--recipe: study {name!r} has no finished trial yet; name one with study:{name}#N")
    return min(done, key=lambda t: (t.values[0], t.number))
