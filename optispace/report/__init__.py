"""Reports: a study's trials -> polars frames -> Markdown tables, PNG figures and Parquet."""

from optispace.report.build import Report, build_report
from optispace.report.write import write_report

__all__ = ["Report", "build_report", "write_report"]
