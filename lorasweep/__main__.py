from lorasweep.cli import app

app(prog_name="lorasweep")
