from flowact.cli import app

app(prog_name="flowact")
