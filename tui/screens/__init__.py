"""The dashboard's screens: the main view, its dialogs, the end-of-run summary, the findings,
the answers to fixed prompts, and the help."""

from .confirm_stop import ConfirmStopScreen
from .dashboard import DashboardScreen
from .export_dialog import ExportScreen
from .health import HealthScreen
from .help import HelpScreen
from .quit_dialog import QuitScreen
from .samples import SamplesScreen
from .summary import SummaryScreen

__all__ = [
    "ConfirmStopScreen",
    "DashboardScreen",
    "ExportScreen",
    "HealthScreen",
    "HelpScreen",
    "QuitScreen",
    "SamplesScreen",
    "SummaryScreen",
]
