"""Run the command-line tool as a module: ``python -m lstm_fn pretrain ...``."""

import sys

try:
    from lstm_fn.cli import main
except KeyboardInterrupt:  # Ctrl-C in the instant before the command line takes it over
    print("interrupted", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    main()
