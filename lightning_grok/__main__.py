"""Entry point of ``python -m lightning_grok``."""

from lightning_grok.cli import main

if __name__ == "__main__":
    main()
