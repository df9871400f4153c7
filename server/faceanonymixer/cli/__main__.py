"""``python -m faceanonymixer.cli``: the ``faceanonymixer`` command."""

from faceanonymixer.cli.main import app

app()
