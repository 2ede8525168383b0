"""The README's configuration table is the code's: a variable added to config.py must be documented."""

from pathlib import Path

from chalicelib import config

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_configuration_table_matches_config_module() -> None:
    text = README.read_text()
    start = text.index("<!-- config-table:start -->") + len("<!-- config-table:start -->")
    end = text.index("<!-- config-table:end -->")
    assert text[start:end].strip() == config.markdown_table(), (
        "README configuration table is stale: paste chalicelib.config.markdown_table() between the markers"
    )


def test_readme_has_no_unfilled_placeholders() -> None:
    text = README.read_text()
    for marker in ("DEMO_CAPTURE", "TEST_TABLE", "ML_FIGURES", "CONFIG_TABLE", "PERF_TABLE"):
        assert marker not in text
