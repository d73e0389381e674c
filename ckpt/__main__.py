"""``python -m ckpt`` runs the command line."""

from ckpt.cli import main

if __name__ == "__main__":
    main()
