"""Run the command-line tool as a module: ``python -m lstm_fn pretrain ...``."""

from lstm_fn.cli import main

if __name__ == "__main__":
    main()
