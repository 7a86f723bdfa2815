import re
from pathlib import Path

from inferfleet.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_starts_with_the_two_setup_commands() -> None:
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_every_setting_is_in_the_readme_table_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `INFERFLEET_([A-Z_0-9]+)` \|", README, re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields <= documented
    assert documented - fields == {"REDIS_SERVER"}  # read by the embedded server, not Settings
