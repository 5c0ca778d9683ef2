//! The IMAP backend: the only code that speaks IMAP (RFC 3501, UIDPLUS
//! RFC 4315, SASL-IR RFC 4959, SPECIAL-USE RFC 6154, MOVE RFC 6851). It
//! knows nothing of POP3; it offers the operations a POP3 session needs,
//! each one IMAP command or a short sequence, with a deadline per command.
//!
//! One [`Client`] per backend connection. Its `impl` is split by job, a file
//! each, so that a command and the checks on its answer are found and
//! changed in one place:
//!
//! - `client`: the connection's life (connect, greeting, STARTTLS,
//!   capabilities, LOGOUT) and the command engine every job sends through;
//! - `login`: LOGIN, AUTHENTICATE and ID;
//! - `select`: SELECT or EXAMINE, and the UID list (`UID SEARCH`);
//! - `fetch`: what a listing needs without bodies: sizes, headers, Gmail ids;
//! - `body`: message bodies: the body stream, the fetch ahead, pieces;
//! - `store`: `\Seen`, `\Deleted`, EXPUNGE, MOVE and COPY, and the UID
//!   sets they name;
//! - `mailboxes`: LIST, the mailbox with a special use (the Trash), and
//!   mailbox names as the server spells them;
//! - `encode`: quoted strings, literals, modified UTF-7 mailbox names;
//! - `error`: [`ImapError`];
//! - `conn` and `tls`: the byte stream with its deadline (and the debug
//!   trace's form of its lines), and TLS over it;
//! - `response`: the parser of what the backend sends;
//! - `fuzzing` (with `--cfg fuzzing` only): the entry points of `fuzz/`.
//!
//! Only this file says what the rest of the crate sees (the `pub use`s);
//! the jobs share the client's fields and helpers within `imap` alone.

mod body;
mod client;
mod conn;
mod encode;
mod error;
mod fetch;
#[cfg(fuzzing)]
pub mod fuzzing;
mod login;
mod mailboxes;
mod response;
mod select;
mod store;
mod tls;

pub use body::BodyStream;
pub use client::{Client, Endpoint, Security};
pub use conn::Transport;
pub use error::ImapError;
pub use fetch::GMAIL_CAPABILITY;
pub use login::Login;
pub use mailboxes::{MailboxName, TRASH};
/// What a refusal carries (`ImapError::Refused`), for those who classify it.
pub use response::{Code, Status, StatusInfo};
pub use select::Selected;
pub use store::{Expunged, Moved};
/// A scripted backend for the tests of the modules that drive a client.
#[cfg(test)]
pub(crate) use tests::{scripted, sent};

/// The scripted backend the tests of every job talk to, and the tests that
/// span jobs.
#[cfg(test)]
mod tests {
    use super::response::tests::Script;
    use super::*;
    use crate::maildrop::BackendMessage;
    use std::io::Cursor;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A client whose backend answers with `script`; returns what it sent.
    pub(crate) fn scripted(script: &str) -> (Client, Arc<Mutex<Vec<u8>>>) {
        let output = Arc::new(Mutex::new(Vec::new()));
        let peer = Script {
            input: Cursor::new(script.as_bytes().to_vec()),
            output: Arc::clone(&output),
        };
        let client = Client::start(Box::new(peer), Duration::from_secs(5)).expect("greeting");
        (client, output)
    }

    pub(crate) fn sent(output: &Arc<Mutex<Vec<u8>>>) -> String {
        String::from_utf8_lossy(&output.lock().expect("lock")).into_owned()
    }

    pub(super) const GREETING: &str = "* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] ready\r\n";
    pub(super) const ID_GREETING: &str = "* OK [CAPABILITY IMAP4rev1 ID AUTH=PLAIN] ready\r\n";

    #[test]
    fn select_snapshot_and_pieces() {
        let (mut c, out) = scripted(&format!(
            "{GREETING}* 2 EXISTS\r\n* OK [UIDVALIDITY 77] v\r\nA0001 OK [READ-WRITE] done\r\n\
             * 1 FETCH (UID 4 RFC822.SIZE 10)\r\n* 2 FETCH (RFC822.SIZE 20 UID 9)\r\nA0002 OK done\r\n\
             * 2 FETCH (UID 9 BODY[]<0> {{5}}\r\nabcde)\r\nA0003 OK done\r\n\
             A0004 OK nothing\r\nA0005 NO [EXPUNGEISSUED] gone\r\n\
             * 2 FETCH (UID 9 BODY[]<0> NIL)\r\nA0006 OK [EXPUNGEISSUED] gone\r\n\
             * 2 FETCH (UID 9 BODY[]<0> NIL)\r\nA0007 OK done\r\n"
        ));
        let sel = c.select("INBOX", false).expect("select");
        assert_eq!(
            sel,
            Selected {
                exists: 2,
                uid_validity: 77
            }
        );
        let snap = c.snapshot(&sel).expect("snapshot");
        assert_eq!(
            snap,
            vec![
                BackendMessage { uid: 4, size: 10 },
                BackendMessage { uid: 9, size: 20 }
            ]
        );
        assert_eq!(
            c.fetch_piece(9, 0, 5).expect("piece"),
            Some(b"abcde".to_vec())
        );
        for _ in 0..4 {
            assert_eq!(c.fetch_piece(9, 5, 5).expect("piece"), None);
        }
        let sent = sent(&out);
        assert!(sent.contains("A0001 SELECT \"INBOX\"\r\nA0002 UID FETCH 1:* (UID RFC822.SIZE)\r\nA0003 UID FETCH 9 (UID BODY.PEEK[]<0.5>)\r\n"), "{sent}");
    }
}
