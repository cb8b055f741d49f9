"""The command line: the Typer app, its option values, what it prints, the progress line, the process it owns.

Imports anything below it (the API, batch mode, runs, the report); nothing imports it.
"""
