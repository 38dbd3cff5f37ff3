"""Markdown tables from polars frames."""

import polars as pl

from optispace.report.tables import NULL, code, default_format, markdown_table


def test_table_layout_alignment_nulls_and_escapes():
    frame = pl.DataFrame({"name": ["a | b", None], "loss": [3.14159, None], "ok": [True, False]})
    text = markdown_table(frame, formats={"loss": "{:.2f}".format}, headers={"loss": "val loss"})
    assert text.splitlines() == [
        "| name | val loss | ok |",
        "| --- | ---: | --- |",
        "| a \\| b | 3.14 | yes |",
        f"| {NULL} | {NULL} | no |",
    ]
    assert text.endswith("\n")


def test_default_format_and_code():
    assert default_format(0.000123456) == "0.0001235" and default_format(7) == "7"
    assert code("momentum(0.9) > sign") == "`momentum(0.9) > sign`"
    assert code("a`b") == "``a`b``"


def test_empty_frame_gives_header_only():
    assert markdown_table(pl.DataFrame(schema={"x": pl.Int64})) == "| x |\n| ---: |\n"
