"""Shared test settings.

Hypothesis runs without per-example deadlines: the machines that run these tests are small and
shared, and a deadline would make timing, not correctness, decide a test's outcome.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "optispace",
    deadline=None,
    max_examples=int(os.environ.get("OPTISPACE_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("optispace")

# Tests compare runs bit for bit; a fixed thread count keeps CPU reductions in one order.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny tensors run faster, and a busy shared machine cannot stall them.

    A module of tiny-tensor tests asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study():
    """The report tests' synthetic study whose answer is known (a module may define its own)."""
    from optispace.report.synthetic import known_study

    return known_study()


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """Run a search file's text with a fake ``trainer`` for ``n_trials`` and load the study it made."""
    import optuna

    from optispace.search.run import run_search
    from optispace.search.spec import parse_search_text
    from optispace.search.storage import open_storage

    def search(text: str, trainer, n_trials: int):
        spec = parse_search_text(text, "search.toml")
        url = str(tmp_path_factory.mktemp(spec.name) / "s.journal")
        run_search(spec, url, trainer=trainer, progress=False, n_trials=n_trials)
        return optuna.load_study(study_name=spec.name, storage=open_storage(url))

    return search


@pytest.fixture(scope="module")
def trials(study):
    """``study``'s trials as the report's trial frame."""
    from optispace.report.frames import trials_frame

    return trials_frame(study.get_trials(deepcopy=False))


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """A small Python text corpus (two stdlib packages) and a cache folder for the regime tests: its
    tokenizer and the cached starting runs are built once per session."""
    import sysconfig
    from pathlib import Path

    root = tmp_path_factory.mktemp("regimes")
    corpus = root / "text"
    corpus.mkdir()
    for package in ("json", "email"):
        for path in sorted(Path(sysconfig.get_paths()["stdlib"], package).glob("*.py")):
            (corpus / f"{package}_{path.name}").write_text(path.read_text())
    return corpus, root / "cache"
