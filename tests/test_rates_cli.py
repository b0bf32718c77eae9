"""``smsc rates import`` and rate cards named by a config, run as a user would."""

from __future__ import annotations

from pathlib import Path

from processes import smsc_run

CONFIG = """\
router:
  carriers:
    - {name: cheap}
  routes:
    - {prefix: "44", carriers: [{carrier: cheap, price: "0.01"}]}
  rates:
    cards:
      - {carrier: cheap, file: cards/cheap.csv}
"""


def test_a_good_card_is_installed_where_the_config_names_it(tmp_path: Path) -> None:
    (tmp_path / "smsc.yaml").write_text(CONFIG)
    new = tmp_path / "from-carrier.csv"
    new.write_text("prefix,price,valid_from\n44,0.0100,2026-01-01\n4477,0.0080,2027-01-01\n")
    result = smsc_run(
        "rates", "import", "--carrier", "cheap", "--config", "smsc.yaml", str(new), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "2 prices for carrier cheap (2 prefixes, 0 networks)" in result.stdout
    assert "valid from 2026-01-01T00:00:00Z to 2027-01-01T00:00:00Z" in result.stdout
    assert (tmp_path / "cards" / "cheap.csv").read_text() == new.read_text()


def test_a_bad_card_is_refused_with_its_lines_and_nothing_is_installed(tmp_path: Path) -> None:
    (tmp_path / "smsc.yaml").write_text(CONFIG)
    (tmp_path / "cards").mkdir()
    old = "prefix,price\n44,0.0100\n"
    (tmp_path / "cards" / "cheap.csv").write_text(old)
    bad = tmp_path / "bad.csv"
    bad.write_text("prefix,price\n44,0.0090\n4477,n/a\n4478,0.1,x\n")
    result = smsc_run(
        "rates", "import", "--carrier", "cheap", "--config", "smsc.yaml", str(bad), cwd=tmp_path
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{bad}:3: price 'n/a' is not a decimal",
        f"{bad}:4: 3 fields, the header has 2",
        f"smsc rates import: {bad} refused, nothing imported",
    ]
    assert (tmp_path / "cards" / "cheap.csv").read_text() == old


def test_a_carrier_without_a_card_in_the_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "smsc.yaml").write_text(CONFIG)
    (tmp_path / "c.csv").write_text("prefix,price\n44,1\n")
    result = smsc_run(
        "rates", "import", "--carrier", "mid", "--config", "smsc.yaml", "c.csv", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "names no rate card for carrier 'mid'" in result.stderr


def test_serve_refuses_a_config_whose_card_has_a_bad_row(tmp_path: Path) -> None:
    (tmp_path / "smsc.yaml").write_text(CONFIG)
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "cheap.csv").write_text("prefix,price\n44,0.01\n44,0.02\n")
    result = smsc_run("serve", "--config", "smsc.yaml", "--port", "0", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "$.router.rates.cards[0].file: cards/cheap.csv:3: prefix 44 at this valid_from" in (
        result.stderr
    )
