from tinycnn.cli import run

run()
