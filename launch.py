"""Start the web UI: `python launch.py [--port 7860] [--models-dir models] [--outputs-dir outputs]`."""

import sys

from webui.app import launch
from webui.config import launch_parser, settings_from_args

if __name__ == "__main__":
    sys.exit(launch(settings_from_args(launch_parser().parse_args())))
