"""delete_action = "trash": QUIT moves the messages marked by DELE to the
Trash folder instead of expunging them. Against this module's own Dovecot,
whose INBOX namespace has a mailbox Trash with the special-use attribute
\\Trash (created at login), and the session's Dovecot, which has none:
UID MOVE where MOVE is offered, UID COPY + STORE + UID EXPUNGE where a
relay hides it, the plain LIST and the no-UIDPLUS rule of a backend
without either, trash_folder, no Trash at all, per-backend settings, the
default that stays expunge, a connection lost in the middle, and --check."""

import imaplib
import itertools
import os
import re
import subprocess

import pytest

import testbed
from helpers import EditingRelay, Pop3, err, imap_login, ok, server_bin

USERS = 40
MESSAGES = 4


@pytest.fixture(scope="module")
def trashbed(workdir):
    """A Dovecot whose users have a Trash folder with \\Trash, and a pool of
    users with MESSAGES messages each, written before it starts."""
    dc = testbed.Dovecot(os.path.join(workdir, "dovecot-trash"), trash="Trash")
    for i in range(1, USERS + 1):
        name = "tr%02d" % i
        dc.add_user(name, "secret", [testbed.simple_message(name, n) for n in
                                     range(1, MESSAGES + 1)])
    dc.start()
    seq = itertools.count(1)

    def user() -> str:
        n = next(seq)
        assert n <= USERS, "raise USERS in test_trash.py"
        return "tr%02d" % n
    dc.user = user
    try:
        yield dc
    finally:
        dc.stop()


@pytest.fixture
def relay(trashbed):
    """Factory: relay(hide=(), cut_after=None, port=None) -> a TrashRelay in
    front of the trash Dovecot (or of ``port``); stopped afterwards."""
    relays = []

    def make(hide=(), cut_after=None, port=None):
        r = TrashRelay(port or trashbed.port, hide, cut_after)
        relays.append(r)
        return r
    yield make
    for r in relays:
        r.stop()


class TrashRelay(EditingRelay):
    """A recording relay (``forwarded``: every command, without its tag)
    that reads the server's lines one by one, literals passed through
    untouched, and can

    * hide capabilities (``hide``, e.g. ``(b"MOVE",)``) from every
      capability list: the greeting's, CAPABILITY's and the login's
      ``[CAPABILITY ...]`` code;
    * cut both connections instead of passing on the server's answer to the
      first command ``cut_after(command)`` picks: the server did it, the
      client never hears so (a connection lost at the worst moment).

    Bounded like the RefusingRelay: 20 connections, 30 s idle each."""

    def __init__(self, upstream_port, hide=(), cut_after=None):
        self.hide = tuple(hide)
        self.cut_after = cut_after or (lambda command: False)
        self.cut = []          # the command whose answer was cut
        self.cutting = {}      # upstream fd -> tag of that command
        super().__init__(upstream_port, lambda command: None)

    def _rewrite(self, up, line):
        tag, _, rest = line.partition(b" ")
        command = rest.rstrip(b"\r\n")
        with self.lock:
            if not self.cut and self.cut_after(command):
                self.cut.append(command)
                self.cutting[up.fileno()] = tag
        return line

    def _edit(self, up, line):
        """The line to pass on, or None to cut the connection here."""
        with self.lock:
            tag = self.cutting.get(up.fileno())
        if tag is not None and line.startswith(tag + b" "):
            return None
        if b"CAPABILITY" in line.upper():
            for cap in self.hide:
                line = re.sub(rb" " + re.escape(cap) + rb"(?=[ \]\r])", b"", line)
        return line

    def commands(self, verb: bytes):
        """The forwarded commands that start with ``verb`` (any case)."""
        return [c for c in self.forwarded if c.upper().startswith(verb.upper())]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def mailbox(dc, user, name="INBOX", password="secret"):
    """{subject: flags} of the messages in mailbox ``name`` (read-only)."""
    m = imap_login(dc, user, password)
    try:
        typ, data = m.select(name, readonly=True)
        assert typ == "OK", (name, data)
        typ, data = m.uid("SEARCH", "ALL")
        assert typ == "OK", data
        if not data[0].split():
            return {}
        typ, data = m.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", data
        out = {}
        for item in data:
            if isinstance(item, tuple):
                subject = re.search(rb"Subject: ([^\r\n]*)", item[1]).group(1).decode()
                assert subject not in out, "two copies of %r in %s" % (subject, name)
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).split()
                out[subject] = flags
        return out
    finally:
        m.logout()


def subjects(dc, user, name="INBOX"):
    return sorted(mailbox(dc, user, name))


def message(user, *numbers):
    return sorted("%s message %d" % (user, n) for n in numbers)


def delete(server, user, *numbers, password="secret"):
    """Log in, DELE each number, QUIT; the QUIT answer."""
    with Pop3(server.port, timeout=30) as p:
        assert ok(p.login(user, password))
        for n in numbers:
            assert ok(p.cmd("DELE %d" % n))
        return p.quit()


def deleted(n):
    return b"+OK Logging out, %d message%s deleted" % (n, b"" if n == 1 else b"s")


# --------------------------------------------------------------------------
# the Trash found by its attribute, with and without MOVE
# --------------------------------------------------------------------------

def test_with_move_one_uid_move_to_the_listed_trash(trashbed, relay, make_server):
    user = trashbed.user()
    r = relay()
    s = make_server(["--delete-action", "trash"], backend_port=r.port)
    assert delete(s, user, 2, 4) == deleted(2)
    assert subjects(trashbed, user) == message(user, 1, 3)
    assert subjects(trashbed, user, "Trash") == message(user, 2, 4)
    assert r.commands(b'LIST "" "*" RETURN (SPECIAL-USE)'), r.forwarded
    assert r.commands(b"UID MOVE") == [b'UID MOVE 2,4 "Trash"'], r.forwarded
    # MOVE alone: nothing flagged, nothing expunged by us.
    assert not r.commands(b"UID STORE") and not r.commands(b"UID EXPUNGE"), r.forwarded
    assert s.wait_log(r"session end: user=%s .*deleted=2/" % user), s.log()[-2000:]


def test_without_move_copy_then_store_and_uid_expunge_of_exactly_those(
        trashbed, relay, make_server):
    user = trashbed.user()
    r = relay(hide=(b"MOVE",))
    s = make_server(["--delete-action", "trash"], backend_port=r.port)
    assert delete(s, user, 3) == deleted(1)
    assert subjects(trashbed, user) == message(user, 1, 2, 4)
    assert subjects(trashbed, user, "Trash") == message(user, 3)
    assert not r.commands(b"UID MOVE"), r.forwarded
    tail = r.forwarded[r.forwarded.index(b'UID COPY 3 "Trash"'):]
    assert tail[:3] == [b'UID COPY 3 "Trash"', b"UID STORE 3 +FLAGS.SILENT (\\Deleted)",
                        b"UID EXPUNGE 3"], r.forwarded


def test_without_move_uidplus_or_special_use_plain_list_and_the_no_uidplus_rule(
        trashbed, make_server):
    """On 127.0.0.3 the Dovecot announces neither MOVE, UIDPLUS nor
    SPECIAL-USE: a plain LIST still shows \\Trash; COPY, then the expunge
    only if no other message is \\Deleted, else ours stay flagged (and
    copied)."""
    args = ["--backend-host", trashbed.NO_UIDPLUS_HOST, "--delete-action", "trash", "--debug"]
    s = make_server(args, backend_port=trashbed.port)
    alone, crowded = trashbed.user(), trashbed.user()
    assert delete(s, alone, 1) == deleted(1)
    assert subjects(trashbed, alone) == message(alone, 2, 3, 4)
    assert subjects(trashbed, alone, "Trash") == message(alone, 1)
    log = s.log()
    assert re.search(r'IMAP C: A\d+ LIST "" "\*"\n', log), log[-3000:]
    assert "RETURN (SPECIAL-USE)" not in log and "UID MOVE" not in log, log[-3000:]
    assert re.search(r"IMAP C: A\d+ UID COPY 1 \"Trash\"", log), log[-3000:]
    assert re.search(r"IMAP C: A\d+ UID SEARCH DELETED", log), log[-3000:]
    # Another client's \Deleted message: no EXPUNGE, ours left flagged.
    m = imap_login(trashbed, crowded, "secret")
    try:
        m.select("INBOX")
        m.uid("STORE", "4", "+FLAGS.SILENT", "(\\Deleted)")
    finally:
        m.logout()
    st = delete(s, crowded, 2)
    assert st == b"+OK Logging out, 1 message flagged \\Deleted: the mail server removes it " \
                 b"at its next expunge", st
    inbox = mailbox(trashbed, crowded)
    assert sorted(inbox) == message(crowded, 1, 2, 3, 4)
    assert b"\\Deleted" in inbox["%s message 2" % crowded], inbox
    assert subjects(trashbed, crowded, "Trash") == message(crowded, 2)
    assert s.wait_log(r"(?i)WARN.*no UIDPLUS.*left 1 messages flagged", 5), s.log()[-2000:]


def test_the_default_stays_expunge(trashbed, relay, make_server):
    user = trashbed.user()
    r = relay()
    s = make_server([], backend_port=r.port)
    assert delete(s, user, 1) == deleted(1)
    assert subjects(trashbed, user) == message(user, 2, 3, 4)
    assert subjects(trashbed, user, "Trash") == []
    assert r.commands(b"UID EXPUNGE 1"), r.forwarded
    assert not r.commands(b"LIST") and not r.commands(b"UID MOVE"), r.forwarded


def test_deleted_in_the_trash_itself_they_are_expunged(trashbed, relay, make_server):
    user = trashbed.user()
    m = imap_login(trashbed, user, "secret")
    try:
        m.select("INBOX")
        typ, data = m.uid("MOVE", "1:2", "Trash")
        assert typ == "OK", data
    finally:
        m.logout()
    r = relay()
    s = make_server(["--delete-action", "trash", "--folders", "INBOX,Trash"],
                    backend_port=r.port)
    # POP3's 1 and 2 are INBOX's messages 3 and 4; 3 and 4 the Trash's 1 and 2.
    with Pop3(s.port, timeout=30) as p:
        assert ok(p.login(user, "secret"))
        assert p.stat()[0] == 4
        assert ok(p.cmd("DELE 1"))
        assert ok(p.cmd("DELE 3"))
        assert p.quit() == deleted(2)
    assert subjects(trashbed, user) == message(user, 4)
    assert subjects(trashbed, user, "Trash") == message(user, 2, 3)
    assert r.commands(b"UID MOVE") == [b'UID MOVE 3 "Trash"'], r.forwarded


# --------------------------------------------------------------------------
# trash_folder, and no Trash at all
# --------------------------------------------------------------------------

def test_trash_folder_wins_over_discovery_and_is_sent_in_modified_utf7(
        dovecot, fresh_user, relay, make_server):
    user = fresh_user(3)
    m = imap_login(dovecot.dc, user, "secret")
    try:
        typ, data = m.create("Gel&APY-scht")
        assert typ == "OK", data
    finally:
        m.logout()
    r = relay(port=dovecot.port)
    s = make_server(["--delete-action", "trash", "--trash-folder", "Gelöscht"],
                    backend_port=r.port)
    assert delete(s, user, 2) == deleted(1)
    assert subjects(dovecot.dc, user) == message(user, 1, 3)
    assert subjects(dovecot.dc, user, "Gel&APY-scht") == message(user, 2)
    assert r.commands(b"UID MOVE") == [b'UID MOVE 2 "Gel&APY-scht"'], r.forwarded
    assert not r.commands(b"LIST"), r.forwarded


def test_no_trash_is_a_clear_err_at_quit_and_nothing_is_deleted(
        dovecot, fresh_user, make_server):
    user = fresh_user(3)
    s = make_server(["--delete-action", "trash"])
    st = delete(s, user, 1, 3)
    assert st.startswith(b"-ERR [SYS/PERM] The messages marked with DELE were not deleted: "
                         b"the mail server has no Trash folder"), st
    inbox = mailbox(dovecot.dc, user)
    assert sorted(inbox) == message(user, 1, 2, 3)
    assert not [f for f in inbox.values() if b"\\Deleted" in f], inbox
    assert s.wait_log(r"(?i)error.*delete_action = trash, but the backend lists no mailbox with "
                      r"the \\Trash attribute: nothing deleted in \"INBOX\"; set trash_folder",
                      5), s.log()[-2000:]
    assert s.wait_log(r"session end: user=%s .*deleted=0/0" % user, 5), s.log()[-2000:]


def test_a_trash_folder_that_does_not_exist_deletes_nothing(trashbed, make_server):
    user = trashbed.user()
    s = make_server(["--delete-action", "trash", "--trash-folder", "Nope"],
                    backend_port=trashbed.port)
    st = delete(s, user, 1)
    assert err(st) and b"no message was deleted" in st, st
    assert subjects(trashbed, user) == message(user, 1, 2, 3, 4)
    assert s.wait_log(r'moving messages from "INBOX" to "Nope": backend refused UID MOVE: '
                      r'No \[TRYCREATE\]', 5), s.log()[-2000:]


# --------------------------------------------------------------------------
# per backend
# --------------------------------------------------------------------------

def write_config(path, port, top, backend_name, backend_extra, user):
    with open(path, "w") as f:
        f.write('backend_host = "127.0.0.1"\nbackend_port = %d\nbackend_tls = "none"\n%s\n\n'
                '[backend.%s]\nhosts = ["127.0.0.1:%d"]\ntls = "none"\n%s\n\n'
                '[[route]]\nuser = "%s"\nbackend = "%s"\n'
                % (port, top, backend_name, port, backend_extra, user, backend_name))
    return str(path)


def test_a_backend_deletes_as_it_says_and_else_as_the_top_level(
        trashbed, make_server, tmp_path):
    port = trashbed.port
    # Top level trash, one backend expunge.
    routed, other = trashbed.user(), trashbed.user()
    conf = write_config(tmp_path / "a.toml", port, 'delete_action = "trash"', "plain",
                        'delete_action = "expunge"', routed)
    s = make_server(["--config", conf], backend_port=port)
    assert delete(s, routed, 1) == deleted(1)
    assert delete(s, other, 1) == deleted(1)
    assert subjects(trashbed, routed, "Trash") == []
    assert subjects(trashbed, other, "Trash") == message(other, 1)
    assert subjects(trashbed, routed) == message(routed, 2, 3, 4)
    # Top level expunge (the default), one backend trash, with a name that
    # undoes the top-level trash_folder: found by its attribute.
    routed, other = trashbed.user(), trashbed.user()
    conf = write_config(tmp_path / "b.toml", port, 'trash_folder = "Elsewhere"', "trashy",
                        'delete_action = "trash"\ntrash_folder = ""', routed)
    s = make_server(["--config", conf], backend_port=port)
    assert delete(s, routed, 2) == deleted(1)
    assert delete(s, other, 2) == deleted(1)
    assert subjects(trashbed, routed, "Trash") == message(routed, 2)
    assert subjects(trashbed, other, "Trash") == []
    assert subjects(trashbed, other) == message(other, 1, 3, 4)


# --------------------------------------------------------------------------
# a connection lost in the middle: one re-login, nothing lost or doubled
# --------------------------------------------------------------------------

def test_a_move_whose_answer_was_lost_is_made_again_after_a_relogin(
        trashbed, relay, make_server):
    user = trashbed.user()
    r = relay(cut_after=lambda c: c.upper().startswith(b"UID MOVE"))
    s = make_server(["--delete-action", "trash"], backend_port=r.port)
    assert delete(s, user, 2) == deleted(1)
    assert r.cut, r.forwarded
    # The second MOVE found UID 2 gone (moved by the first): no error.
    assert r.commands(b"UID MOVE") == [b'UID MOVE 2 "Trash"'] * 2, r.forwarded
    assert len(r.commands(b"LOGIN")) == 2, r.forwarded
    assert subjects(trashbed, user) == message(user, 1, 3, 4)
    assert subjects(trashbed, user, "Trash") == message(user, 2)
    assert s.wait_log(r"logged in again to delete the messages in \"INBOX\"", 5), s.log()[-2000:]


@pytest.mark.parametrize("cut", [b"UID STORE", b"UID EXPUNGE"])
def test_without_move_a_lost_answer_leaves_one_copy_in_the_trash(
        trashbed, relay, make_server, cut):
    """Cut after the \\Deleted flags (the copy is made) or after the
    expunge (the message is gone): the second attempt copies only what
    carries no \\Deleted and is still there, so the Trash holds one copy."""
    user = trashbed.user()
    r = relay(hide=(b"MOVE",), cut_after=lambda c: c.upper().startswith(cut))
    s = make_server(["--delete-action", "trash"], backend_port=r.port)
    assert delete(s, user, 3) == deleted(1)
    assert r.cut, r.forwarded
    assert len(r.commands(b"LOGIN")) == 2, r.forwarded
    assert r.commands(b"UID SEARCH UID 3 DELETED"), r.forwarded
    assert subjects(trashbed, user) == message(user, 1, 2, 4)
    assert subjects(trashbed, user, "Trash") == message(user, 3)


# --------------------------------------------------------------------------
# --check
# --------------------------------------------------------------------------

def check(port, tmp_path, user, *extra):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    return subprocess.run([server_bin(), "--config", "/dev/null", "--backend-host", "127.0.0.1",
                           "--backend-port", str(port), "--backend-tls", "none", "--check",
                           "--user", user, "--password-file", str(pw)] + list(extra),
                          capture_output=True, text=True, timeout=60)


def test_check_says_which_trash_a_session_would_use(trashbed, dovecot, tmp_path):
    user = trashbed.user()
    r = check(trashbed.port, tmp_path, user, "--delete-action", "trash")
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'delete_action: trash, to "Trash" (listed with \\Trash)' in r.stdout, r.stdout
    r = check(trashbed.port, tmp_path, user, "--delete-action", "trash",
              "--trash-folder", "Trash")
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'delete_action: trash, to trash_folder "Trash" (0 messages)' in r.stdout, r.stdout
    r = check(trashbed.port, tmp_path, user, "--delete-action", "trash",
              "--trash-folder", "Nope")
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'trash_folder "Nope" cannot be opened' in r.stderr, r.stderr
    r = check(dovecot.port, tmp_path, "alice", "--delete-action", "trash")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "lists no mailbox with the \\Trash attribute: set trash_folder" in r.stderr, r.stderr
    # Without delete_action = trash, --check says nothing about it.
    r = check(trashbed.port, tmp_path, user)
    assert r.returncode == 0 and "delete_action" not in r.stdout, r.stdout + r.stderr
