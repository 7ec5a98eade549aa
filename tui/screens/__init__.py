"""The dashboard's screens: the main view, its dialogs, and the end-of-run summary."""

from .confirm_stop import ConfirmStopScreen
from .dashboard import DashboardScreen
from .export_dialog import ExportScreen
from .quit_dialog import QuitScreen
from .summary import SummaryScreen

__all__ = ["ConfirmStopScreen", "DashboardScreen", "ExportScreen", "QuitScreen", "SummaryScreen"]
