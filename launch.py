"""Start the web UI: `python launch.py [--port 7860] [--models-dir models] [--outputs-dir outputs]`."""

import sys

from webui.app import launch
from webui.config import launch_parser, settings_from_args

if __name__ == "__main__":
    args = launch_parser().parse_args()
    if args.share:
        sys.exit(
            "--share (a public Gradio tunnel) is not supported: it would expose this machine to the internet. "
            "To share on your network use --listen with --auth USER:PASS."
        )
    try:
        sys.exit(launch(settings_from_args(args)))
    except ValueError as error:
        sys.exit(f"error: {error}")
