//! The TRANSACTION state (RFC 1939 section 5): answers from the snapshot
//! (STAT, LIST, UIDL), deletion marks in memory (DELE, RSET), and the two
//! commands that need the backend: RETR/TOP (one path, see `retrieval`) and
//! QUIT (the expunge of what was marked).

use super::command::Command;
use super::reply::{Lines, Reply, RespCode};
use super::retrieval::{Kind, Retrieval};
use crate::backend::PrefetchRequest;
use crate::limits::{PREFETCH_BATCH_BYTES, PREFETCH_BATCH_MESSAGES, PREFETCH_MAX_MESSAGE};
use crate::maildrop::{FolderDeletions, Maildrop, MsgNum, UidlFormat};

pub enum TxStep {
    Reply(Reply),
    Retrieve(Retrieval),
    /// Enter UPDATE: expunge these (may be empty).
    Quit(Vec<FolderDeletions>),
}

pub struct Rules<'a> {
    pub uidl_format: &'a UidlFormat,
    pub read_only: bool,
    /// A RETR names the messages to ask for ahead (see `Maildrop::live_after`).
    pub prefetch: bool,
}

pub fn command(rules: &Rules, drop: &mut Maildrop, cmd: Command) -> TxStep {
    let reply = match cmd {
        Command::Stat => {
            let (n, size) = drop.stat();
            Reply::ok(format!("{n} {size}"))
        }
        Command::List(None) => {
            let (n, size) = drop.stat();
            let mut lines = Lines::with_capacity(n * 16);
            for (num, m) in drop.live() {
                lines.push_with(|out| {
                    out.extend_from_slice(itoa::Buffer::new().format(num).as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(itoa::Buffer::new().format(m.size).as_bytes());
                });
            }
            Reply::MultiLine(format!("{n} messages ({size} octets)"), lines)
        }
        Command::List(Some(n)) => match drop.get(n) {
            Ok(m) => Reply::ok(format!("{n} {}", m.size)),
            Err(e) => Reply::err(e.message()),
        },
        Command::Uidl(None) => {
            let mut lines = Lines::with_capacity(drop.stat().0 * 24);
            for (num, m) in drop.live() {
                lines.push_with(|out| {
                    out.extend_from_slice(itoa::Buffer::new().format(num).as_bytes());
                    out.push(b' ');
                    drop.push_uidl(out, num, &m, rules.uidl_format);
                });
            }
            Reply::MultiLine(String::new(), lines)
        }
        Command::Uidl(Some(n)) => match drop.get(n) {
            Ok(m) => Reply::ok(format!("{n} {}", drop.uidl(n, &m, rules.uidl_format).0)),
            Err(e) => Reply::err(e.message()),
        },
        Command::Retr(n) => return retrieve(drop, n, Kind::Retr, rules.prefetch),
        Command::Top(n, lines) => return retrieve(drop, n, Kind::Top(lines), false),
        Command::Dele(_) if rules.read_only => Reply::err_code(
            RespCode::SysPerm,
            "This server is configured read-only: DELE is not possible",
        ),
        Command::Dele(n) => match drop.mark_deleted(n) {
            Ok(_) => Reply::ok(format!("Message {n} deleted")),
            Err(e) => Reply::err(e.message()),
        },
        Command::Noop => Reply::ok(""),
        Command::Rset => {
            drop.reset();
            let (n, size) = drop.stat();
            Reply::ok(format!("{n} messages ({size} octets)"))
        }
        Command::Quit => return TxStep::Quit(drop.deleted_by_folder()),
        Command::User(_) | Command::Pass(_) | Command::Auth(_) => Reply::err("Already logged in"),
        Command::Stls => Reply::err("STLS is only allowed before login"),
        Command::Capa => Reply::err("CAPA is handled before the state"),
    };
    TxStep::Reply(reply)
}

fn retrieve(drop: &Maildrop, n: MsgNum, kind: Kind, prefetch: bool) -> TxStep {
    let m = match drop.get(n) {
        Ok(m) => m,
        Err(e) => return TxStep::Reply(Reply::err(e.message())),
    };
    // A client that reads in order asks for the next messages next: the
    // live ones that follow in this folder, as many as fit the batch.
    let mut uids = Vec::new();
    let mut bytes = 0u64;
    let batch = if prefetch { PREFETCH_BATCH_MESSAGES } else { 0 };
    for next in drop.live_after(n).take(batch) {
        bytes = bytes.saturating_add(next.size);
        if next.folder != m.folder
            || next.size > PREFETCH_MAX_MESSAGE
            || (bytes > PREFETCH_BATCH_BYTES && !uids.is_empty())
        {
            break;
        }
        uids.push(next.uid);
    }
    let next = (!uids.is_empty()).then_some(PrefetchRequest {
        folder: m.folder,
        uids,
    });
    TxStep::Retrieve(Retrieval::new(n, m, drop.uid_validity(m.folder), kind).then_prefetch(next))
}
