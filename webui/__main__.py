"""`python -m webui …`: the command-line front end."""

from webui.cli import main

raise SystemExit(main())
