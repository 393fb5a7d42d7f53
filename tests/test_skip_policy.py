"""CI's skip policy (tests/conftest.py) fails a session with an unlisted skip and passes a listed one."""
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _pytest(tmp_path, allowed: str, fail_on_skip: bool, workers: list[str]):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\ndef test_runs():\n    pass\n\n"
        "@pytest.mark.skip(reason='no data here')\ndef test_skipped():\n    pass\n")
    (tmp_path / "allowed.txt").write_text(allowed)
    env = {**os.environ, "JAXREC_ALLOWED_SKIPS": str(tmp_path / "allowed.txt"),
           "JAXREC_FAIL_ON_SKIP": "1" if fail_on_skip else "0"}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "--rootdir", str(tmp_path),
                           "-c", os.devnull, *workers, str(tmp_path / "test_sample.py")],
                          cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_unlisted_skip_fails_ci_listed_one_passes(tmp_path, workers):
    """Also when the tests run on pytest-xdist's workers (the suite's default): the controller sees the skip."""
    res = _pytest(tmp_path, "# nothing allowed\n", fail_on_skip=True, workers=workers)
    assert res.returncode == 1, res.stdout
    assert ("bringing up nodes" in res.stdout) == bool(workers)  # xdist really ran the test on its workers
    assert "skipped without a reason listed" in res.stdout and "test_sample.py::test_skipped: no data here" in res.stdout
    res = _pytest(tmp_path, "test_sample.py::test_skipped  # fixture data is not shipped\n", fail_on_skip=True,
                  workers=workers)
    assert res.returncode == 0, res.stdout
    assert _pytest(tmp_path, "", fail_on_skip=False, workers=workers).returncode == 0  # locally a skip stays a skip
