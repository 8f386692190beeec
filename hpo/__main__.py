from hpo.cli import run

run()
