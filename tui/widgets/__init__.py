"""The dashboard's widgets, one a file."""

from .chart_key import ChartKey
from .event_log import EventLog
from .health_banner import HealthBanner
from .metric_chart import MetricChart
from .metric_tile import MetricTile
from .run_header import RunHeader

__all__ = ["ChartKey", "EventLog", "HealthBanner", "MetricChart", "MetricTile", "RunHeader"]
