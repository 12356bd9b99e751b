#!/usr/bin/env sh
# The one way qsim starts, in the container and outside it (`make run`, and the tests):
# wait for the database, apply migrations, fill an empty development database with the bundled
# questions, then hand the process over to the HTTP server (exec: it receives the stop signal and
# saves the index on the way out).
set -eu

python -m app.prestart
exec python -m app serve --no-prestart "$@"
