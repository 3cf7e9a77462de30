"""The ``lstm-fn`` command line: thin click commands over the library.

:func:`main` is the entry point. It imports nothing before it has taken over Ctrl-C
(:mod:`lstm_fn.cli.interrupts`), so an interrupt at any moment of start-up ends the command
with one line; the commands are in :mod:`lstm_fn.cli.app`, and what ends a command, with
which exit code, is :mod:`lstm_fn.cli.errors`.
"""


def main():
    import sys

    try:
        from lstm_fn.cli import interrupts
    except KeyboardInterrupt:  # in its first instant: nothing is set up to tear down
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    try:
        interrupts.install()
        from lstm_fn.cli.app import cli
        from lstm_fn.cli.setup import prepare_jax, prepare_process

        prepare_process()
        cli(prog_name="lstm-fn", obj=prepare_jax)
    except KeyboardInterrupt:  # Ctrl-C while starting up, before a command's own handling
        interrupts.taken()
        print("interrupted", file=sys.stderr)
        interrupts.leave(130)  # as a shell reports a process ended by Ctrl-C
    except SystemExit as ending:
        if ending.code == 130:
            interrupts.leave(130)
        if ending.code not in (0, None):
            from lstm_fn.cli.setup import leave_cluster

            leave_cluster(ending.code)
        raise
