"""The README's parameter table is the registry's."""

from __future__ import annotations

from pathlib import Path

from engine.config.registry import markdown_table


def test_readme_parameter_table_matches_the_registry():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "regenerate the README table from engine.config.registry.markdown_table()"


def test_readme_osc_tables_match_the_address_space():
    from engine.control.docs import markdown_tables

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert markdown_tables() in readme, "regenerate the README's OSC tables from engine.control.docs.markdown_tables()"
