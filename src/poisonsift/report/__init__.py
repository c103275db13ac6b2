"""Reports with pictures: of a reproduction (:mod:`.reproduction`) and of a scan (:mod:`.scan`)."""

from poisonsift.report.merge import check_results, merge_results
from poisonsift.report.reproduction import table_markdown, write_report
from poisonsift.report.scan import write_scan_report

__all__ = ["check_results", "merge_results", "table_markdown", "write_report", "write_scan_report"]
