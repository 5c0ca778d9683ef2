"""UIDL formats for migration (README, "UIDLs for migration") against the
testbed's Dovecot: the named templates (cyrus, courier, uw) give exactly
the strings of their servers from the folder's UIDVALIDITY and UIDs;
gmail gives GmailId + the hex of X-GM-MSGID (through a relay that makes
Dovecot look like Gmail) and a clear -ERR [SYS/PERM] from a backend without
X-GM-EXT-1; header-digest is stable across sessions, unique, gives twins
-UID, and survives a new UIDVALIDITY where the UID-based formats change.
Headers are fetched at the first UIDL only: one command per folder, never
for STAT, LIST, RETR or TOP."""

import hashlib
import re
import time

import pytest

from helpers import GmailRelay, ImapView, Pop3, RefusingRelay, err, imap_login, ok
import testbed

HEADER_FETCH = re.compile(rb"^UID FETCH [0-9:,]+ \(UID BODY\.PEEK\[HEADER\]<0\.196608>\)$")
MSGID_FETCH = re.compile(rb"^UID FETCH [0-9:,]+ \(UID X-GM-MSGID\)$")

# src/uidl.rs SKIPPED_HEADERS, and the normalisation of header_digest.
SKIPPED = {h.lower() for h in (
    b"Content-Length", b"Return-Path", b"Status", b"X-IMAP", b"X-IMAPbase", b"X-Keywords",
    b"X-Message-Flag", b"X-Status", b"X-UID", b"X-UIDL", b"X-Yahoo-Newman-Property")}


def _normalised(raw: bytes) -> bytes:
    out = bytearray()
    for b in raw:
        if b in b" \t\r\n":
            continue
        if b == 0x3F or b < 0x20 or b >= 0x7F:
            if not out or out[-1] != 0x3F:
                out.append(0x3F)
            continue
        out.append(b)
    return bytes(out)


def header_digest(header: bytes) -> bytes:
    """The README's definition, independently of the Rust code."""
    fields, cur, skipping = [], None, False
    for line in header.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                cur = (cur or b"") + line
            continue
        if cur is not None:
            fields.append(cur)
        name, colon, value = line.partition(b":")
        skipping = (name if colon else line).strip().lower() in SKIPPED
        cur = None if skipping else (name.lower() + colon + value if colon else line)
    if cur is not None:
        fields.append(cur)
    h = hashlib.sha256()
    for f in fields:
        n = _normalised(f)
        if n:
            h.update(n + b"\0")
    return h.hexdigest()[:32].encode()


def imap_headers(dovecot, user, folder="INBOX"):
    """[(uid, BODY[HEADER])] of a folder, as Dovecot serves them."""
    m = imap_login(dovecot.dc, user, "secret")
    try:
        typ, data = m.select(folder, readonly=True)
        assert typ == "OK", data
        typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER])")
        assert typ == "OK", data
        out = []
        for item in data:
            if isinstance(item, tuple):
                out.append((int(re.search(rb"UID (\d+)", item[0]).group(1)), item[1]))
        return sorted(out)
    finally:
        m.logout()


def uidls(server, user, commands=()):
    """The UIDL listing of one session (after ``commands``), and UIDL n of each."""
    with Pop3(server.port) as p:
        assert ok(p.login(user, "secret"))
        for c in commands:
            assert ok(p.cmd(c)) or c.startswith(("LIST", "RETR", "TOP")), c
            if c in ("LIST", "UIDL") or c.startswith(("RETR", "TOP")):
                p.read_multi()
        listing = p.uidl()
        for n, u in listing.items():
            assert p.cmd("UIDL %d" % n) == b"+OK %d %s" % (n, u)
        assert ok(p.quit())
    assert len(set(listing.values())) == len(listing), listing
    for u in listing.values():
        assert 1 <= len(u) <= 70 and all(0x21 <= b <= 0x7E for b in u), u
    return listing


@pytest.mark.parametrize("name,template", [
    ("cyrus", lambda uv, uid: b"%d.%d" % (uv, uid)),
    ("courier", lambda uv, uid: b"%d-%d" % (uv, uid)),
    ("uw", lambda uv, uid: b"%08x%08x" % (uv, uid)),
])
def test_named_templates_give_their_servers_uidls(dovecot, make_server, fresh_user, name,
                                                  template):
    user = fresh_user(3)
    with ImapView(dovecot.dc, user) as v:
        uv, uids = v.uidvalidity(), v.uids()
    s = make_server(["--uidl-format", name])
    expected = {n: template(uv, uid) for n, uid in enumerate(uids, start=1)}
    assert uidls(s, user) == expected
    assert uidls(s, user) == expected


def test_gmail_uidls_through_a_relay_that_adds_x_gm_msgid(dovecot, make_server, fresh_user):
    user = fresh_user(4)
    with ImapView(dovecot.dc, user) as v:
        uids = v.uids()
    relay = GmailRelay(dovecot.port)
    try:
        s = make_server(["--uidl-format", "gmail"], backend_port=relay.port)
        expected = {n: b"GmailId%x" % GmailRelay.msgid(uid)
                    for n, uid in enumerate(uids, start=1)}
        before = len(relay.forwarded)
        assert uidls(s, user, ["STAT", "LIST"]) == expected
        sent = relay.forwarded[before:]
        assert len([c for c in sent if MSGID_FETCH.match(c)]) == 1, sent
        assert uidls(s, user) == expected
        # A session without UIDL asks for no id.
        before = len(relay.forwarded)
        with Pop3(s.port) as p:
            assert ok(p.login(user, "secret"))
            assert p.stat()[0] == 4 and len(p.list()) == 4
            st, _ = p.retr(1)
            assert ok(st) and ok(p.quit())
        assert not [c for c in relay.forwarded[before:] if b"X-GM-MSGID" in c.upper()]
    finally:
        relay.stop()


def test_gmail_without_x_gm_ext_1_is_a_clear_error_and_the_session_goes_on(
        make_server, fresh_user):
    user = fresh_user(2)
    s = make_server(["--uidl-format", "gmail"])
    with Pop3(s.port) as p:
        assert ok(p.login(user, "secret"))
        st = p.cmd("UIDL")
        assert err(st) and st.startswith(b"-ERR [SYS/PERM]"), st
        assert b"X-GM-EXT-1" in st and b"uidl_format" in st, st
        assert err(p.cmd("UIDL 1"))
        assert p.stat()[0] == 2
        assert ok(p.quit())
    assert s.wait_log(r"uidl_format.*X-GM-EXT-1|X-GM-EXT-1.*uidl_format"), s.log()[-2000:]


def _twin_messages(user):
    msgs = [testbed.simple_message(user, k) for k in (1, 2, 3)]
    # A twin of message 2: the same header, another body (a copy kept twice).
    twin = msgs[1].replace(b"Body line 1", b"Another body")
    assert twin != msgs[1]
    return msgs + [twin]


def test_header_digest_is_stable_unique_and_fetched_at_the_first_uidl_only(
        dovecot, make_server, fresh_user):
    user = fresh_user(messages=_twin_messages("twins"))
    headers = imap_headers(dovecot, user)
    assert len(headers) == 4
    digests = [header_digest(h) for _, h in headers]
    assert digests[1] == digests[3] and len(set(digests)) == 3
    expected = {}
    for n, ((uid, _), d) in enumerate(zip(headers, digests), start=1):
        expected[n] = d + (b"-%d" % uid if digests.count(d) > 1 else b"")
    assert expected[2].endswith(b"-%d" % headers[1][0]) and len(expected[1]) == 32

    relay = RefusingRelay(dovecot.port, lambda command: None)
    try:
        s = make_server(["--uidl-format", "header-digest"], backend_port=relay.port)
        # STAT, LIST, RETR and TOP fetch no header.
        before = len(relay.forwarded)
        with Pop3(s.port) as p:
            assert ok(p.login(user, "secret"))
            assert p.stat()[0] == 4 and len(p.list()) == 4
            assert ok(p.cmd("LIST 2"))
            assert ok(p.retr(1)[0]) and ok(p.multi("TOP 2 0")[0])
            sent = relay.forwarded[before:]
            assert not [c for c in sent if b"HEADER" in c.upper()], sent
            # The first UIDL: one command for the folder; later ones none.
            assert p.uidl() == expected
            assert p.cmd("UIDL 4") == b"+OK 4 " + expected[4]
            assert p.uidl() == expected
            sent = relay.forwarded[before:]
            assert len([c for c in sent if HEADER_FETCH.match(c)]) == 1, sent
            assert ok(p.quit())
        assert uidls(s, user) == expected
    finally:
        relay.stop()


def test_a_header_over_192_kib_counts_by_its_start_and_the_session_goes_on(
        dovecot, make_server, fresh_user):
    received = b"".join(b"Received: from relay%05d.example.net by mx.example.org; "
                        b"Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i for i in range(3000))
    huge = received + testbed.simple_message("huge", 1)
    assert huge.index(b"\r\n\r\n") > 196608 + 1000
    user = fresh_user(messages=[testbed.simple_message("huge", 2), huge])
    headers = imap_headers(dovecot, user)
    expected = {1: header_digest(headers[0][1]), 2: header_digest(headers[1][1][:196608])}
    assert expected[2] != header_digest(headers[1][1])
    s = make_server(["--uidl-format", "header-digest", "--snapshot-cache", "false"])
    assert uidls(s, user) == expected
    assert uidls(s, user) == expected


def _fill_folder(dovecot, user, folder, messages, old_uidvalidity=None):
    """(Re)create ``folder`` with ``messages`` in this order; its UIDVALIDITY
    (another than ``old_uidvalidity``: Dovecot's are time-based, so a
    recreation within the same second is retried, boundedly)."""
    for _ in range(5):
        m = imap_login(dovecot.dc, user, "secret")
        try:
            m.delete(folder)
            typ, data = m.create(folder)
            assert typ == "OK", data
            for msg in messages:
                typ, data = m.append(folder, None, None, msg)
                assert typ == "OK", data
            typ, data = m.status(folder, "(UIDVALIDITY)")
            uv = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))
        finally:
            m.logout()
        if uv != old_uidvalidity:
            return uv
        time.sleep(1.1)
    raise AssertionError("Dovecot gave %s the same UIDVALIDITY again" % folder)


def test_header_digest_survives_a_new_uidvalidity_where_uid_formats_change(
        dovecot, make_server, fresh_user):
    """A move to another IMAP server, as far as the UIDLs go: the same
    messages in the same order under a new UIDVALIDITY."""
    user = fresh_user(1)
    msgs = _twin_messages(user)
    uv1 = _fill_folder(dovecot, user, "Moved", msgs)
    by_digest = make_server(["--uidl-format", "header-digest", "--folders", "Moved"])
    by_uid = make_server(["--uidl-format", "dovecot", "--folders", "Moved"])
    digest1, uid1 = uidls(by_digest, user), uidls(by_uid, user)
    uv2 = _fill_folder(dovecot, user, "Moved", msgs, old_uidvalidity=uv1)
    assert uv2 != uv1
    digest2, uid2 = uidls(by_digest, user), uidls(by_uid, user)
    assert len(digest2) == 4 and digest2 == digest1
    assert not set(uid2.values()) & set(uid1.values())


def test_header_digest_across_folders_stays_unique(dovecot, make_server, fresh_user):
    """The same message in INBOX and Archive: twins over the maildrop, each
    with its UID, the Archive one also with the folder's -1."""
    user = fresh_user(2)
    with ImapView(dovecot.dc, user) as v:
        first = v.body(v.uids()[0])
    m = imap_login(dovecot.dc, user, "secret")
    try:
        assert m.create("Archive")[0] == "OK"
        assert m.append("Archive", None, None, first)[0] == "OK"
    finally:
        m.logout()
    inbox = imap_headers(dovecot, user)
    archive = imap_headers(dovecot, user, "Archive")
    d = header_digest(inbox[0][1])
    assert header_digest(archive[0][1]) == d
    s = make_server(["--uidl-format", "header-digest", "--folders", "INBOX,Archive"])
    got = uidls(s, user)
    assert got == {
        1: d + b"-%d" % inbox[0][0],
        2: header_digest(inbox[1][1]),
        3: d + b"-%d-1" % archive[0][0],
    }
    assert uidls(s, user) == got


def _digest_files(server):
    import os
    d = server.lock_dir + "-cache"
    return [os.path.join(d, f) for f in os.listdir(d) if f.startswith("digests-")] \
        if os.path.isdir(d) else []


def test_header_digests_are_cached_and_only_new_mail_is_fetched(
        dovecot, make_server, fresh_user):
    import os
    import stat
    user = fresh_user(3)
    relay = RefusingRelay(dovecot.port, lambda command: None)
    try:
        s = make_server(["--uidl-format", "header-digest"], backend_port=relay.port)

        def session():
            before = len(relay.forwarded)
            got = uidls(s, user)
            return got, [c for c in relay.forwarded[before:] if HEADER_FETCH.match(c)]

        first, fetches = session()
        assert len(fetches) == 1 and len(first) == 3, fetches
        files = _digest_files(s)
        assert len(files) == 1, files
        assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
        with open(files[0], "rb") as f:
            text = f.read()
        assert user.encode() not in text and b"INBOX" not in text
        assert re.fullmatch(rb"pop3server-header-digests 1\nuidvalidity \d+\ncount 3\n"
                            rb"(\d+ [0-9a-f]{32}\n){3}end\n", text), text
        # From the cache: no header fetched.
        again, fetches = session()
        assert again == first and fetches == []
        # New mail: its header only.
        with ImapView(dovecot.dc, user) as v:
            v.append(testbed.simple_message(user, 77))
            new_uid = v.uids()[-1]
        more, fetches = session()
        assert fetches == [b"UID FETCH %d (UID BODY.PEEK[HEADER]<0.196608>)" % new_uid], fetches
        assert {n: more[n] for n in (1, 2, 3)} == first
        assert more[4] == header_digest(imap_headers(dovecot, user)[-1][1])
        # A damaged file is not used, and is whole again after the session.
        with open(files[0], "wb") as f:
            f.write(text.replace(b"count 3", b"count 9"))
        damaged, fetches = session()
        assert damaged == more and len(fetches) == 1
        _, fetches = session()
        assert fetches == []
    finally:
        relay.stop()


def test_snapshot_cache_false_keeps_no_digests(dovecot, make_server, fresh_user):
    user = fresh_user(2)
    relay = RefusingRelay(dovecot.port, lambda command: None)
    try:
        s = make_server(["--uidl-format", "header-digest", "--snapshot-cache", "false"],
                        backend_port=relay.port)
        for _ in range(2):
            before = len(relay.forwarded)
            uidls(s, user)
            assert len([c for c in relay.forwarded[before:] if HEADER_FETCH.match(c)]) == 1
        assert _digest_files(s) == []
    finally:
        relay.stop()


def test_a_refused_header_fetch_is_an_error_of_that_uidl_and_the_session_goes_on(
        dovecot, make_server, fresh_user):
    user = fresh_user(2)
    refuse = [True]
    relay = RefusingRelay(
        dovecot.port,
        lambda c: b"[LIMIT] try later" if refuse[0] and HEADER_FETCH.match(c) else None)
    try:
        s = make_server(["--uidl-format", "header-digest"], backend_port=relay.port)
        with Pop3(s.port) as p:
            assert ok(p.login(user, "secret"))
            st = p.cmd("UIDL")
            assert st == (b"-ERR [SYS/TEMP] The mail server refused the UIDLs of folder INBOX: "
                          b"[LIMIT] try later"), st
            assert p.stat()[0] == 2
            # Asked again at the next UIDL, which now gets an answer.
            refuse[0] = False
            assert len(p.uidl()) == 2
            assert ok(p.quit())
        assert len(relay.refused) == 1
    finally:
        relay.stop()
