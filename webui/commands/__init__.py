"""Larger `python -m webui` subcommands, each module exposing `register(subparsers)`."""
