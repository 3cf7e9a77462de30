"""Run the command-line tool from a checkout: ``python cli.py pretrain ...``."""

from lstm_fn.cli import main

if __name__ == "__main__":
    main()
