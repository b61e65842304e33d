"""schemathesis hooks for `st run` in scripts/fuzz.py: the check that replaces its built-in
not_a_server_error, which would count the documented 503 of a dependency that is down (here
the inference server, with Retry-After) as a server error."""

import schemathesis

from tests.support.fuzz import no_server_error

schemathesis.check(no_server_error)
