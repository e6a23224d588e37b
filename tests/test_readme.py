"""The README's two commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", head, re.DOTALL)]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    install_run, install_test = _commands()
    assert install_run.endswith("zeroth run") and "\n" not in install_run
    assert "pytest" in install_test and "\n" not in install_test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_test in ci
