"""`python -m app …` runs the command-line interface."""

from app.cli.main import main

main()
