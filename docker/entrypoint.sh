#!/usr/bin/env sh
# The one way qsim starts, in the container and outside it (`make run`, and the tests):
# wait for the database, apply migrations, fill an empty development database with the bundled
# questions, then serve HTTP, all in the one process `qsim serve` runs (exec: it receives the stop
# signal and saves the index on the way out; one interpreter start instead of two, which is a second
# of every start-up). `python -m app.prestart` alone does the first three steps.
set -eu

exec python -m app serve "$@"
