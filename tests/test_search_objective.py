"""A trial's objective: the train config it hands the trainer carries the search's regime, and the
trial records the regime."""

import optuna

from optispace.proxies import TrainConfig
from optispace.proxies.train import RunRecord
from optispace.search.objective import Objective
from optispace.search.spec import parse_search_text

SEARCH = """
[study]
name = "rl"
question = "q?"

[proxy]
tier = "tiny"
steps = 2
regime = "rl"
task = "addition"
group_size = 4

[roles.embed]
chain = "second_moment(factored)"
lr = 1e-3

[roles.head]
tie = "embed"

[roles.matrix]
chain = "momentum(0.9) > second_moment(full)"
lr = 1e-3

[roles.vector]
chain = "momentum(0.9) > second_moment(full)"
lr = 1e-3
"""


def test_trials_train_in_the_searchs_regime_and_record_it():
    spec = parse_search_text(SEARCH, "rl.toml")
    seen = []

    def trainer(config, on_eval):
        settings = dict(config)
        assert settings.pop("probes") == ()  # the trainer builds the named probes, none here
        assert settings.pop("nproc") == 1
        seen.append(TrainConfig(**settings))
        return RunRecord(config=config, corpus={"fingerprint": "f"}, final_val_loss=0.75,
                         state_bytes={"embed": 8}, regime="rl", objective="reward_error",
                         metrics={"reward": 0.25})

    study = optuna.create_study()
    study.optimize(Objective(spec, trainer), n_trials=1)
    (cfg,) = seen
    assert (cfg.regime, cfg.task, cfg.group_size, cfg.kl) == ("rl", "addition", 4, 0.0)
    assert study.trials[0].user_attrs["regime"] == "rl" and study.trials[0].values == [0.75]
    assert study.trials[0].user_attrs["metric.reward"] == [0.25]  # the regime's measurement, per seed
