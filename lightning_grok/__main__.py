"""Entry point of ``python -m lightning_grok``.

``report RUN_DIR`` writes figures from a finished run; every other subcommand
(``fit``, ``validate``, ...) goes to LightningCLI.
"""

import sys


def _main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from lightning_grok.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))

    from lightning_grok.cli import main

    main()


if __name__ == "__main__":
    _main()
