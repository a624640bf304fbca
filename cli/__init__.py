"""Command-line interface of rvqcodec (a thin Typer layer over the library)."""
