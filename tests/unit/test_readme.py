"""The README's key tables list exactly the keys of the provider's key tables, with the same defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provider.websocket.config import CLIENT_KEYS, SERVER_KEYS, KeyTable

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def readme_table(heading: str) -> dict[str, str]:
    """Key → default, from the first table after the line that starts with ``heading``.

    A row may name several keys (``A`` / ``B``) with one default each (``x`` / ``y``) or one for all.
    """
    start = next(i for i, line in enumerate(README.splitlines()) if line.startswith(heading))
    rows: dict[str, str] = {}
    in_table = False
    for line in README.splitlines()[start + 1 :]:
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[0]) <= {"-", " "} or cells[0] == "key":
            continue
        keys = re.findall(r"`([A-Za-z_<>]+)`", cells[0])
        defaults = [d.strip().strip("`") for d in cells[1].split(" / ")]
        if len(defaults) != len(keys):
            defaults = [cells[1].strip("`")] * len(keys)
        for key, default in zip(keys, defaults, strict=True):
            rows[key.replace("<Name>", "")] = default
    return rows


@pytest.mark.parametrize(
    ("heading", "table"),
    [("### Keys (handler link", SERVER_KEYS), ("### Client-mode keys", CLIENT_KEYS)],
    ids=["server", "client"],
)
def test_the_readme_lists_every_key_with_its_default(heading: str, table: KeyTable) -> None:
    documented = readme_table(heading)
    assert sorted(documented) == sorted(table.names())
    for key in table:
        assert documented[key.name] == key.shown, key.name


def test_deprecated_aliases_are_documented() -> None:
    for table in (SERVER_KEYS, CLIENT_KEYS):
        for key in table:
            for alias in key.aliases:
                assert f"`{alias}`" in README, alias
