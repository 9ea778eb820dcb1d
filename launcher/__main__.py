"""``python -m launcher`` and the ``launch`` command.

The stop flag comes first (launcher/signals.py): a Ctrl-C or SIGTERM even while the rest of
``launch`` is still being imported is a stop request, not a traceback or a silent death."""

from launcher.signals import StopFlag


def run() -> None:
    StopFlag().install()
    from launcher.cli import main

    main()


if __name__ == "__main__":
    run()
