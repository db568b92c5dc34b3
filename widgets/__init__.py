"""Interactive panels built on bitkit (ipywidgets 8 + plotly).

Each panel is displayed by being the last expression of a cell. In JupyterLab it is live; in a
notebook run headless (papermill) and exported to HTML it shows a static copy (tables, images
and a plotly figure) of what it showed. The direction of imports is ``notebooks -> widgets ->
bitkit``: bitkit never imports these.
"""

from widgets.duplicate_inspector import DuplicateInspector
from widgets.error_browser import ErrorBrowser
from widgets.fewshot_explorer import FewShotExplorer
from widgets.hyperrule_panel import HyperRulePanel
from widgets.ooc_builder import OOCBuilder
from widgets.self_check import SelfCheck
from widgets.training_monitor import TrainingMonitor

__all__ = ["DuplicateInspector", "ErrorBrowser", "FewShotExplorer", "HyperRulePanel", "OOCBuilder",
           "SelfCheck", "TrainingMonitor"]
