"""The dashboard's widgets, one a file."""

from .event_log import EventLog
from .health_banner import HealthBanner
from .metric_chart import ChartLine, MetricChart
from .metric_tile import MetricTile
from .run_header import RunHeader

__all__ = ["ChartLine", "EventLog", "HealthBanner", "MetricChart", "MetricTile", "RunHeader"]
