"""One module a `classguard` command: HELP, add_arguments(parser) and run(args)."""
