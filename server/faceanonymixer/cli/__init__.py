"""The command line: ``faceanonymixer`` and one module per command group."""

from faceanonymixer.cli.main import app

__all__ = ["app"]
