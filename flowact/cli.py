"""The `flowact` command line."""

import typer

app = typer.Typer(help="FlowAct: real-time interactive avatars.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the FlowAct version."""
    from importlib.metadata import version as _version

    typer.echo(_version("flowact"))
