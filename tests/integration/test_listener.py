"""The standalone listener: a cap on concurrent sessions, and finished
children are reaped so their slots come back."""

import time

from helpers import Pop3, ok


def connect_when_a_slot_is_free(port, seconds=10.0):
    """A session whose greeting is +OK; waits (bounded) while the listener
    is full, e.g. with the child of the fixture's readiness probe."""
    deadline = time.monotonic() + seconds
    for _ in range(200):
        p = Pop3(port, read_greeting=False)
        greeting = p.readline()
        if greeting.startswith(b"+OK"):
            return p
        p.close()
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AssertionError("no free session slot within %.0f s" % seconds)


def test_connection_over_max_children_is_refused_and_slot_returns(make_server, fresh_user):
    user = fresh_user(2)
    server = make_server(["--max-children", "1"])
    first = connect_when_a_slot_is_free(server.port)
    with first:
        assert ok(first.login(user, "secret"))
        # The only slot is taken: the next client is told so and closed.
        with Pop3(server.port, read_greeting=False) as second:
            refused = second.readline()
            assert refused.startswith(b"-ERR [SYS/TEMP]"), refused
        assert ok(first.quit())
    # The first child ends and is reaped, so its slot comes back.
    again = connect_when_a_slot_is_free(server.port)
    with again:
        assert ok(again.login(user, "secret"))
        assert ok(again.quit())
