//! Every limit and default timeout of the server, each with the reason for its
//! value. Settings that an operator may change start from the defaults here;
//! nothing else in the crate hard-codes a size or a duration.

use std::time::Duration;

/// RFC 2449 section 4: a command line is at most 255 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 255;

/// Replies are buffered and written to the client at this size (or when
/// no more pipelined commands are waiting).
pub const CLIENT_WRITE_BUFFER: usize = 64 * 1024;

/// Bytes read from the backend per `read` call.
pub const BACKEND_READ_CHUNK: usize = 64 * 1024;

/// The backend read buffer starts at this size and grows to
/// `BACKEND_READ_CHUNK` at the first read that fills it: a short session
/// (login, STAT, QUIT) never needs more, and does not pay for zeroing and
/// faulting in 64 KiB.
pub const BACKEND_READ_START: usize = 8 * 1024;

/// How often the standalone listener collects finished children while no
/// connection arrives.
pub const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// Pause before accepting again when the listener ran out of file
/// descriptors or memory: long enough for sessions to end, short enough
/// not to drop clients that wait in the backlog.
pub const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Upper bound for any timeout setting: a day. Larger values are typos, and
/// would overflow deadline arithmetic.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;

/// Bytes read from the client per `read` call: large enough that a pipelined
/// burst of commands arrives in one call, small enough to stay off the heap's
/// radar.
pub const CLIENT_READ_CHUNK: usize = 4096;

/// RFC 1939 section 3 asks for an inactivity timer of at least 10 minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long to wait for the TCP (and later TLS) connection to the backend.
pub const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one IMAP command may take from sending it to its tagged reply.
/// A fetch is done in pieces of `FETCH_CHUNK` so that this bounds each piece,
/// not a whole large message.
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Failed logins are answered after this delay to slow down guessing; the
/// backend's own delay comes on top.
pub const DEFAULT_LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(2);

/// After this many failed logins on one connection it is closed: a client
/// with the right password never needs more, a guesser must reconnect.
pub const DEFAULT_MAX_LOGIN_FAILURES: u32 = 3;

/// Bad commands in a row (unknown, malformed, too long) after which a
/// connection is closed, as Dovecot does after 20: a real client never sends
/// that many, a scanner or a confused peer must not hold a process for ever.
pub const DEFAULT_MAX_BAD_COMMANDS: u32 = 20;

/// Concurrent sessions of the standalone listener.
pub const DEFAULT_MAX_CHILDREN: usize = 256;

/// A message is fetched from the backend in pieces of this size
/// (`BODY.PEEK[]<offset.length>`): the memory of a RETR stays bounded by it
/// whatever the message size, and each piece is one backend command with its
/// own timeout.
pub const FETCH_CHUNK: u32 = 256 * 1024;

/// Spare transfer buffers a session keeps (`buffers`): one read from the
/// backend, one being written to the client, and one of each in flight
/// while the next message is fetched ahead.
pub const SPARE_BUFFERS: usize = 4;

/// Below this, a buffer is not worth recycling: the allocators serve
/// blocks this small from their heaps without asking the kernel. Message
/// bodies (a few KiB and up) are above it; command lines are below.
pub const SPARE_BUFFER_MIN: usize = 2 * 1024;

/// Above this, a buffer is freed rather than kept: a piece of a body
/// (`FETCH_CHUNK`) at most doubles when dot-stuffed (a bare LF becomes
/// CRLF, a leading dot doubles), plus the status line.
pub const SPARE_BUFFER_MAX: usize = 2 * FETCH_CHUNK as usize + 4096;

/// Longest IMAP response line (without literals) we accept. The longest line
/// we provoke is a `* SEARCH` result listing deleted UIDs; 1 MiB holds
/// about 100,000 of them.
pub const MAX_IMAP_LINE: usize = 1024 * 1024;

/// Largest IMAP literal we accept outside of a message piece (a literal we did
/// not ask for, e.g. a mailbox name): anything bigger is a broken backend.
pub const MAX_IMAP_LITERAL: usize = 64 * 1024;

/// Largest total size of one IMAP response (lines plus literals). A message
/// piece is at most `FETCH_CHUNK`; the rest is slack for the response syntax.
pub const MAX_IMAP_RESPONSE: usize = FETCH_CHUNK as usize + 2 * MAX_IMAP_LINE;

/// Deepest IMAP list nesting the parser skips over; real responses
/// (BODYSTRUCTURE) stay far below, and the parser recurses per level.
pub const MAX_IMAP_NESTING: usize = 64;

/// FETCH responses accepted beyond twice what SELECT announced (mail that
/// arrived meanwhile); more is a broken backend, not a mailbox.
pub const SNAPSHOT_SLACK: usize = 1000;

/// How much of a backend's own text (a `NO` to one message's FETCH) is
/// shown in a POP3 reply: enough to name the cause, short enough for one
/// line of a client's error dialog.
pub const MAX_BACKEND_TEXT: usize = 160;

/// Longest UID set in one command: RFC 7162 section 4 asks clients to keep
/// command lines under 8,192 octets, and servers refuse longer ones
/// (Dovecot at 64 KiB). A longer deletion goes in several commands.
pub const MAX_UID_SET: usize = 4000;

/// Largest maildrop served: the snapshot keeps 16 bytes a message, and a
/// backend's EXISTS count must not decide how much memory we reserve.
pub const MAX_MESSAGES: u32 = 1_000_000;

/// RFC 1939 section 7: a unique-id is 1 to 70 characters in 0x21..=0x7E.
pub const MAX_UIDL_LEN: usize = 70;

/// Bytes of SHA-256 kept for a `header-digest` UIDL (32 hex digits): 128
/// bits make an accidental collision between two different header blocks
/// of one maildrop about as likely as guessing a 128-bit key (birthday
/// bound 2^64 messages), and 32 digits plus a twin's `-<UID>` (11) and a
/// folder's `-<index>` stay well under `MAX_UIDL_LEN`.
pub const HEADER_DIGEST_BYTES: usize = 16;

/// Bytes of a header block a `header-digest` UIDL is made of: longer ones
/// (thousands of `Received:` lines, a hostile message) count by their first
/// 192 KiB. The whole header would be a literal over the largest one a
/// response may carry (`FETCH_CHUNK`, 256 KiB), a protocol error that would
/// keep the user from UIDL in every session; real headers are a few KiB.
pub const MAX_DIGESTED_HEADER: u32 = 192 * 1024;

/// SASL responses (RFC 5034 `AUTH` lines and continuations) carry OAuth
/// tokens of several KiB; RFC 7628 deployments need at least 16 KiB.
pub const MAX_SASL_LINE: usize = 32 * 1024;

/// argon2id memory per device-password hash (KiB). Every session process
/// may verify one at a time, so `max_children` (256) of them at once take
/// 1 GiB at most, which a small machine has. OWASP's equivalent settings
/// trade memory for passes (19 MiB x 2 ... 7 MiB x 5): with less memory,
/// more passes.
pub const ARGON2_MEMORY_KIB: u32 = 4096;

/// argon2id passes for the memory above: about what OWASP's smallest
/// recommended settings cost in time.
pub const ARGON2_PASSES: u32 = 8;

/// The most a client address's failed device logins add to each answer
/// (Dovecot's auth penalty caps at 15 s too): slow enough that guessing
/// device passwords is hopeless, short enough for a device whose password
/// was just fixed.
pub const LOGIN_PENALTY_MAX: Duration = Duration::from_secs(15);

/// After this long without a failure an address starts afresh.
pub const LOGIN_PENALTY_FORGET: Duration = Duration::from_secs(3600);

/// An access token is used until this long before it expires: a session
/// that starts with it must still be able to log in at the backend.
pub const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(120);

/// One request to a token endpoint, connect to last byte.
pub const TOKEN_HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a session waits for another one's token refresh (the flock):
/// a refresh takes at most `TOKEN_HTTP_TIMEOUT`, with room to spare.
pub const TOKEN_LOCK_WAIT: Duration = Duration::from_secs(30);

/// Largest token endpoint answer read: tokens are a few KiB.
pub const MAX_TOKEN_RESPONSE: u64 = 64 * 1024;

/// The longest a device consent (`--oauth-consent`) waits for the person,
/// whatever the provider says its code is valid for.
pub const MAX_CONSENT_WAIT: Duration = Duration::from_secs(30 * 60);

/// How long a browser consent (`grant = "authorization_code"`) waits for
/// the sign-in unless `consent_timeout` says otherwise: long enough to find
/// the right account and approve, short enough that a forgotten run ends.
pub const DEFAULT_CONSENT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The browser consent (`--oauth-consent` of an `authorization_code`
/// source): how long a connection to the redirect port may take to send its request
/// head, and to take the answer: a browser sends at once; a speculative
/// connection that sends nothing waits in its own thread, not in the way.
pub const REDIRECT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest request line accepted on the redirect port, and longest line
/// pasted on standard input: the redirect's address is a few hundred
/// bytes.
pub const MAX_REDIRECT_LINE: usize = 8 * 1024;

/// Longest request head read on the redirect port: the headers are read to
/// their end before answering (closing a socket with unread bytes resets
/// the connection, and the browser would show an error instead of the
/// page), and a browser's headers, cookies for 127.0.0.1 included, are a
/// few KiB.
pub const MAX_REDIRECT_HEAD: usize = 32 * 1024;

/// How often the wait looks for new connections while nothing arrives:
/// the delay a browser's redirect may see; idle, the loop costs nothing.
pub const REDIRECT_WAIT_POLL: Duration = Duration::from_millis(50);

/// Connections served during one consent: a browser makes a few (the
/// redirect, the favicon, speculative ones); many more is someone else
/// knocking, and each costs a thread.
pub const MAX_REDIRECT_CONNECTIONS: usize = 64;

/// A client assertion (certificate credential) is good for this long:
/// it is made for one request, and a short life limits a stolen one.
pub const CLIENT_ASSERTION_LIFETIME: Duration = Duration::from_secs(300);

/// A service account's assertion: Google accepts at most an hour.
pub const SERVICE_ACCOUNT_ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// After the provider declares a grant dead (`invalid_grant`,
/// `invalid_client`, `unauthorized_client`), no token is asked for with it
/// for this long, doubling with each further refusal up to
/// `DEAD_GRANT_REST_MAX`: every device poll asking again would only be
/// refused again, and providers count such requests against the client. A
/// new consent or a changed `[oauth.NAME]` ends the rest at once.
pub const DEAD_GRANT_REST: Duration = Duration::from_secs(60);
pub const DEAD_GRANT_REST_MAX: Duration = Duration::from_secs(3600);

/// `--oauth-status` and the log warn this long before a refresh token, a
/// certificate or a client secret expires: time to renew it calmly.
pub const TOKEN_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// A health warning in the log comes at most this often per source.
pub const TOKEN_WARNING_INTERVAL: Duration = Duration::from_secs(86_400);

/// Longest line of a snapshot cache file: a UID (10 digits), a space, a size
/// (20 digits), a newline. Bounds how much of a cache file is read.
pub const SIZE_CACHE_MAX_LINE: usize = 32;

/// Longest line of a header digest cache file: a UID (10 digits), a space,
/// the digest (`2 * HEADER_DIGEST_BYTES` = 32 hex digits), a newline.
pub const DIGEST_CACHE_MAX_LINE: usize = 48;

/// Without ESEARCH (RFC 4731), `UID SEARCH ALL` lists every UID on one line
/// of up to `MAX_IMAP_LINE` (1 MiB): about 100,000 of them. Larger folders on
/// such a server take the full snapshot instead of using the cache.
pub const MAX_SEARCH_ALL_MESSAGES: u32 = 100_000;

/// A backend connection made early (`backend_connect_early`) and not used
/// for this long before the login is replaced by a fresh one: servers close
/// connections that stay unauthenticated (Dovecot after a minute), and a
/// client this slow gains nothing from the head start anyway.
pub const EARLY_CONNECTION_MAX_AGE: Duration = Duration::from_secs(20);

/// `backend_prefetch` asks for the next message ahead only up to this size:
/// a message the client does not ask for after all is read and dropped
/// before the next backend command, and that costs the backend one read and
/// the session the time to drain it; typical mail is far below this.
pub const PREFETCH_MAX_MESSAGE: u64 = 256 * 1024;

/// `backend_prefetch` asks for the messages that follow in one fetch, up to
/// this many bytes together (a first one up to `PREFETCH_MAX_MESSAGE`
/// always) and this many messages: the client then waits for the backend
/// once a batch instead of once a message. The bodies wait in the socket
/// buffers, not in memory; a client that stops reading in order costs the
/// backend at most this much to read and the session the time to drop it.
pub const PREFETCH_BATCH_BYTES: u64 = 256 * 1024;
pub const PREFETCH_BATCH_MESSAGES: usize = 16;

/// How long the cluster lock's Redis may take to connect or to answer one
/// command. It runs next to the front-ends; a Redis slower than this is
/// failing, and every login waits for it.
pub const CLUSTER_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The lease of the cluster-wide lock (`cluster_lock_ttl`). After a killed
/// or cut-off session its user waits up to this long (`[IN-USE]`); a live
/// session renews every third of it. A minute keeps that wait short and the
/// renewals rare (one small round trip every 20 s).
pub const DEFAULT_CLUSTER_LOCK_TTL: Duration = Duration::from_secs(60);

/// Shortest `cluster_lock_ttl`: renewals come every third of it and must
/// fit in the time a single blocked write to a slow client may take.
pub const MIN_CLUSTER_LOCK_TTL_SECS: u64 = 10;

/// Redis replies the lock reads are a status, an integer or a short bulk
/// string: anything longer is not the server we think it is.
pub const REDIS_MAX_LINE: usize = 4096;
pub const REDIS_MAX_BULK: usize = 64 * 1024;
pub const REDIS_MAX_ARRAY: usize = 64;

/// How long a connection from a `proxy_protocol_from` source may take to
/// send its PROXY protocol header (or the idle timeout, if shorter): a
/// balancer sends it right after connecting, before it relays a single
/// client byte, so a source that is silent this long is not a balancer
/// speaking the protocol, and must not hold a process.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest PROXY protocol header read: a v1 header is at most 107 bytes, a
/// v2 header 16 bytes plus 216 of addresses (AF_UNIX) plus its TLVs, which
/// HAProxy's `proxy-v2-options` keep far below this (unique ID at most 128
/// bytes, authority a host name, SSL version, cipher and certificate CN).
/// A v2 header announcing more is refused before it is read.
pub const MAX_PROXY_HEADER: usize = 2048;

/// How long a mailbox rests after its provider throttled it without saying
/// for how long (`throttle_cooldown`): Exchange's usual suggestion is five
/// minutes, and a device polling every minute then costs the provider one
/// login per rest instead of five.
pub const DEFAULT_THROTTLE_COOLDOWN: Duration = Duration::from_secs(300);

/// The longest rest, whatever the provider suggests or the file says: a
/// garbled or hostile time must not lock a mailbox out for days, and a
/// provider still throttling after an hour says so again at the next login.
pub const MAX_THROTTLE_COOLDOWN: Duration = Duration::from_secs(3600);

/// The shortest rest: a suggestion of "0 ms" still earns one second, so
/// that the sessions waiting behind it do not all log in at once.
pub const MIN_THROTTLE_COOLDOWN: Duration = Duration::from_secs(1);

/// Characters of the provider's words kept with a rest (for the log of the
/// sessions it turns away and `--check`): a provider's line can be long.
pub const MAX_COOLDOWN_RECORD: usize = 200;

/// The longest statistics datagram: an event is a few short words and
/// numbers (about 150 bytes); a bound keeps the aggregator's reads and a
/// stray sender's garbage small.
pub const MAX_STATS_DATAGRAM: usize = 1024;

/// Longest TLS version name a balancer may send in its PROXY v2 header
/// (PP2_SUBTYPE_SSL_VERSION). OpenSSL's names are at most 7 characters
/// (`TLSv1.3`, `SSLv3`); a longer value is no version name, and the name
/// goes into every session's log line.
pub const MAX_BALANCER_TLS_VERSION: usize = 32;

/// Distinct label sets one metric of the statistics aggregator keeps
/// (`pop3server_logins_total{method,result}`, ...); a new set beyond them
/// is counted under `other`. Label values come from our code and from
/// configuration names (backends, token sources), so a real deployment has
/// a few dozen sets per metric; anyone who can write to the socket could
/// otherwise make the aggregator's memory and every scrape grow without
/// end. 1,000 is forty times what a large routing table needs, and its
/// worst case, every metric full, is a few MiB.
pub const MAX_STATS_LABEL_SETS: usize = 1000;

/// Longest label value the aggregator keeps; a longer one (or one with a
/// byte outside printable ASCII) becomes `other`. Configuration names and
/// our own words are far shorter.
pub const MAX_STATS_LABEL_VALUE: usize = 64;

/// Longest HTTP request head (request line and headers) the metrics
/// endpoint reads: Prometheus sends a few hundred bytes; more is not a
/// scraper.
pub const MAX_METRICS_REQUEST_HEAD: usize = 8 * 1024;

/// How long a connection to the metrics endpoint may take to send its
/// request head and to take the answer: Prometheus sends at once and reads
/// at once (its own scrape timeout defaults to 10 s); a connection that
/// sends nothing is closed rather than holding one of the few handlers.
pub const METRICS_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections the metrics endpoint serves at once, each in a thread of its
/// own: one scraper or two, and room for a `curl`; more are answered 503
/// at once, so that silent connections cannot starve the scraper for
/// longer than `METRICS_REQUEST_TIMEOUT`.
pub const MAX_METRICS_CONNECTIONS: usize = 4;

/// Pause before the aggregator reads again after the kernel was short of
/// memory for a datagram (ENOMEM, ENOBUFS): long enough not to spin, short
/// enough that the senders' queue does not fill meanwhile.
pub const STATS_RETRY_DELAY: Duration = Duration::from_millis(100);
