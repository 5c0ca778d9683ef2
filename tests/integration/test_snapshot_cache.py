"""The snapshot cache (message sizes by UID, kept between sessions) against
the testbed's Dovecot, with a recording relay in between to see which IMAP
commands each session sends: the first session lists sizes for every
message and writes the cache; the next asks only for the UID list; a new
message costs one size; a damaged file, another UIDVALIDITY or a deleted
cache falls back to the full listing; what the client sees is always what
IMAP says; the files hold UIDs and sizes only, mode 0600; the setting turns
it off.  Also backend_connect_early: the backend connection is opened at
the greeting, and nothing goes over it before the login."""

import os
import re
import stat

import pytest

from helpers import ImapView, Pop3, RefusingRelay, ok
import testbed

FULL = re.compile(rb"^UID FETCH 1:\* \(UID RFC822\.SIZE\)$")
SEARCH = re.compile(rb"^UID SEARCH (RETURN \(ALL\) )?ALL$")
SIZES = re.compile(rb"^UID FETCH [0-9:,]+ \(UID RFC822\.SIZE\)$")


@pytest.fixture
def relay(dovecot):
    r = RefusingRelay(dovecot.port, lambda command: None)
    yield r
    r.stop()


def session(server, user, relay):
    """One POP3 session: LIST as the client sees it, and the IMAP commands
    this session sent."""
    before = len(relay.forwarded)
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        sizes = sorted(p.list().items())
        uidl = p.uidl()
        assert ok(p.cmd("QUIT"))
    return sizes, uidl, relay.forwarded[before:]


def expected(dovecot, user):
    with ImapView(dovecot.dc, user) as v:
        return [(i + 1, size) for i, (_, size) in enumerate(v.uid_sizes())]


def cache_files(server):
    d = server.lock_dir + "-cache"
    return [os.path.join(d, f) for f in os.listdir(d)] if os.path.isdir(d) else []


def test_second_session_asks_only_for_uids_and_a_new_message_for_one_size(
        dovecot, fresh_user, make_server, relay):
    user = fresh_user(5)
    s = make_server(backend_port=relay.port)

    sizes, uidl1, sent = session(s, user, relay)
    assert sizes == expected(dovecot, user)
    assert [c for c in sent if FULL.match(c)], sent
    files = cache_files(s)
    assert len(files) == 1, files
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    with open(files[0], "rb") as f:
        text = f.read()
    # UIDs and sizes only: no user name, no folder, no content.
    assert user.encode() not in text and b"INBOX" not in text
    assert re.fullmatch(rb"pop3server-sizes 1\nuidvalidity \d+\ncount 5\n(\d+ \d+\n){5}end\n",
                        text), text

    sizes2, uidl2, sent = session(s, user, relay)
    assert sizes2 == sizes and uidl2 == uidl1
    assert [c for c in sent if SEARCH.match(c)], sent
    assert not [c for c in sent if FULL.match(c) or SIZES.match(c)], sent

    with ImapView(dovecot.dc, user) as v:
        v.append(testbed.simple_message(user, 99, body_lines=40))
        new_uid = v.uids()[-1]
    sizes3, _, sent = session(s, user, relay)
    assert sizes3 == expected(dovecot, user) and len(sizes3) == 6
    fetched = [c for c in sent if SIZES.match(c)]
    assert fetched == [b"UID FETCH %d (UID RFC822.SIZE)" % new_uid], sent
    assert not [c for c in sent if FULL.match(c)], sent


def test_deleted_messages_leave_the_cache_and_sizes_stay_true(
        dovecot, fresh_user, make_server, relay):
    user = fresh_user(4)
    s = make_server(backend_port=relay.port)
    session(s, user, relay)
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        assert ok(p.cmd("DELE 2"))
        assert ok(p.cmd("QUIT"))
    with ImapView(dovecot.dc, user) as v:
        v.expunge_uid(v.uids()[0])  # another client deletes one too
    sizes, _, sent = session(s, user, relay)
    assert sizes == expected(dovecot, user) and len(sizes) == 2
    assert not [c for c in sent if FULL.match(c) or SIZES.match(c)], sent
    with open(cache_files(s)[0], "rb") as f:
        assert b"count 2\n" in f.read()


@pytest.mark.parametrize("damage", ["garbage", "cut", "wrong_size_line", "other_uidvalidity",
                                    "deleted"])
def test_any_doubt_about_the_file_means_the_full_listing(
        dovecot, fresh_user, make_server, relay, damage):
    user = fresh_user(3)
    s = make_server(backend_port=relay.port)
    session(s, user, relay)
    path = cache_files(s)[0]
    with open(path, "rb") as f:
        text = f.read()
    if damage == "garbage":
        text = b"\x00\xff" * 20
    elif damage == "cut":
        text = text[: len(text) - 8]
    elif damage == "wrong_size_line":
        text = re.sub(rb"\n(\d+) (\d+)\n", rb"\n\1 x\n", text, count=1)
    elif damage == "other_uidvalidity":
        text = re.sub(rb"uidvalidity \d+", b"uidvalidity 1", text)
    if damage == "deleted":
        os.remove(path)
    else:
        with open(path, "wb") as f:
            f.write(text)
    sizes, _, sent = session(s, user, relay)
    assert sizes == expected(dovecot, user)
    assert [c for c in sent if FULL.match(c)], sent
    # ...and the file is whole again.
    sizes, _, sent = session(s, user, relay)
    assert not [c for c in sent if FULL.match(c) or SIZES.match(c)], sent


def test_a_size_in_the_cache_is_only_ever_used_for_its_uid(
        dovecot, fresh_user, make_server, relay):
    """A cache entry for a UID the folder no longer has is not served, and a
    message whose UID the cache lacks gets its size from the backend."""
    user = fresh_user(2)
    s = make_server(backend_port=relay.port)
    session(s, user, relay)
    path = cache_files(s)[0]
    with open(path, "rb") as f:
        text = f.read()
    uids = [int(u) for u in re.findall(rb"\n(\d+) \d+", text)]
    # Pretend the cache knew a UID that is not there (count fixed up).
    text = text.replace(b"count 2\n", b"count 3\n").replace(
        b"end\n", b"%d 999999\nend\n" % (uids[-1] + 50))
    with open(path, "wb") as f:
        f.write(text)
    sizes, _, _ = session(s, user, relay)
    assert sizes == expected(dovecot, user)


def test_snapshot_cache_false_writes_nothing_and_lists_in_full(
        dovecot, fresh_user, make_server, relay):
    user = fresh_user(2)
    s = make_server(["--snapshot-cache", "false"], backend_port=relay.port)
    for _ in range(2):
        sizes, _, sent = session(s, user, relay)
        assert sizes == expected(dovecot, user)
        assert [c for c in sent if FULL.match(c)], sent
    assert cache_files(s) == []


def test_an_unwritable_cache_dir_is_logged_and_the_session_still_works(
        dovecot, fresh_user, make_server, relay, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    user = fresh_user(2)
    s = make_server(["--cache-dir", str(blocked)], backend_port=relay.port, mode="inetd")
    sizes, _, _ = session(s, user, relay)
    assert sizes == expected(dovecot, user)
    with open(s.log_path, errors="replace") as f:
        log = f.read()
    assert "cannot" in log and "cache" in log, log[-2000:]


# --------------------------------------------------------------------------
# backend_connect_early (the same recording relay counts connections)
# --------------------------------------------------------------------------

def backend_connections(relay) -> int:
    return len(relay.socks) // 2


def test_the_backend_connection_is_made_at_the_greeting_and_sent_nothing_before_pass(
        make_server, relay, fresh_user):
    from helpers import wait_for
    s = make_server(backend_port=relay.port, mode="inetd")
    before = backend_connections(relay)
    forwarded = len(relay.forwarded)
    # A port probe: greeting, then gone. Its early connection is closed
    # without a command (no LOGOUT round trip either).
    with Pop3(s.port) as p:
        assert ok(p.greeting)
        assert wait_for(lambda: backend_connections(relay) == before + 1, 5)
    user = fresh_user(1)
    with Pop3(s.port) as p:
        # Connected before the client said anything...
        assert wait_for(lambda: backend_connections(relay) == before + 2, 5)
        assert ok(p.cmd("USER " + user))
        # ...and no byte of the client's reached the backend as a command
        # before PASS: the first one is the LOGIN.
        assert relay.forwarded[forwarded:] == []
        assert ok(p.cmd("PASS secret"))
        assert relay.forwarded[forwarded].startswith(b"LOGIN "), relay.forwarded
        assert ok(p.cmd("QUIT"))
    assert backend_connections(relay) == before + 2


def test_backend_connect_early_false_connects_at_the_login(make_server, relay, fresh_user):
    import time
    s = make_server(["--backend-connect-early", "false"], backend_port=relay.port,
                    mode="inetd")
    before = backend_connections(relay)
    user = fresh_user(1)
    with Pop3(s.port) as p:
        assert ok(p.cmd("USER " + user))
        time.sleep(0.5)
        assert backend_connections(relay) == before
        assert ok(p.cmd("PASS secret"))
        assert ok(p.cmd("QUIT"))
    assert backend_connections(relay) == before + 1
