"""Subcommands of the ``normref`` CLI, one module each.

A module here that defines ``add_parser(subparsers)`` is a subcommand: it adds its parser and sets ``func`` to the
function that runs it (returning the exit status). The CLI discovers the modules, so a new command is a new file.
"""
