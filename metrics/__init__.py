"""The paper's evaluation: the scoring protocols (MAE, F-beta, IoU, PR curves), the region split, relative-depth
accuracy, the paper's reported numbers and the results report (`metrics.report`: results.json, the table)."""
from .depth import relative_depth_errors
from .paper_results import PAPER_SETS, TABLES, paper_row
from .protocol import PROTOCOLS, OfficialMetrics, Protocol, StandardMetrics, get_protocol
from .regions import RegionMetrics

__all__ = ["PROTOCOLS", "Protocol", "get_protocol", "OfficialMetrics", "StandardMetrics", "RegionMetrics",
           "relative_depth_errors", "PAPER_SETS", "TABLES", "paper_row"]
