"""Searches: Optuna studies over the optimizer space, defined by TOML files in ``searches/``.

spec.py        search file -> validated SearchSpec (errors name the key and its line)
families.py    the primitive families a file chooses from, and their chain text
space.py       define-by-run sampling of a configuration (a chain and numbers per role)
objective.py   one trial: train the proxy on each seed, record what the report reads
ranks.py       a trial's seed on [proxy] nproc ranks, through train --nproc's launcher
storage.py     journal file by default, any Optuna RDB URL; outages waited out
journal.py     the journal file read up to its last complete record; a bad tail set aside
heartbeat.py   heartbeats and stale trials (failed and retried), alike on every storage
study.py       the study: per-trial seeded sampler, pruner, attributes, created or resumed
run.py         create or resume a study; workers until exactly N trials have finished
interrupts.py  SIGINT / SIGTERM as one exception, held back during storage writes
"""
