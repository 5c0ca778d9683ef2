//! Our IMAP response parser against imap-codec 1.0, an independent
//! implementation of the RFC 3501 grammar, on the same server bytes. Where
//! both parse a response, they must agree on everything the client acts
//! on: the response boundaries (a literal recognised where the grammar has
//! none shifts every later response), tags and status, UID, size and
//! body of FETCH data, and the attributes and name of a LIST line. Where only one of them accepts a response the run
//! stops there: imap-codec is stricter in places (and we are on purpose:
//! see ARCHITECTURE.md on why our parser stayed).
#![no_main]

use imap_codec::ResponseCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::core::NString;
use imap_codec::imap_types::fetch::MessageDataItem;
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::response::{Data, Response, Status};
use libfuzzer_sys::fuzz_target;
use pop3server::imap::fuzzing::{Summary, summarize};

fuzz_target!(|data: &[u8]| {
    let codec = ResponseCodec::default();
    let mut rest = data;
    for (i, ours) in summarize(data).iter().enumerate() {
        let Ok(ours) = ours else { break };
        let Ok((remaining, theirs)) = codec.decode(rest) else {
            break;
        };
        rest = remaining;
        compare(i, ours, &theirs);
    }
});

fn bytes(s: &NString) -> Option<Vec<u8>> {
    s.0.as_ref().map(|v| v.as_ref().to_vec())
}

fn compare(i: usize, ours: &Summary, theirs: &Response) {
    let differ = || panic!("response {i}: ours {ours:?}, imap-codec {theirs:?}");
    match (ours, theirs) {
        (Summary::Continuation, Response::CommandContinuationRequest(_)) => {}
        (Summary::Tagged { tag, status }, Response::Status(s)) => {
            let (their_tag, their_status) = match s {
                Status::Ok { tag, .. } => (tag, "OK"),
                Status::No { tag, .. } => (tag, "NO"),
                Status::Bad { tag, .. } => (tag, "BAD"),
                Status::Bye { .. } => (&None, "BYE"),
            };
            if their_tag.as_ref().map(|t| t.inner()) != Some(tag.as_str())
                || *status != their_status
            {
                differ();
            }
        }
        (Summary::Untagged { status }, Response::Status(s)) => {
            let (tagged, their_status) = match s {
                Status::Ok { tag, .. } => (tag.is_some(), "OK"),
                Status::No { tag, .. } => (tag.is_some(), "NO"),
                Status::Bad { tag, .. } => (tag.is_some(), "BAD"),
                Status::Bye { .. } => (false, "BYE"),
            };
            if tagged || *status != their_status {
                differ();
            }
        }
        (Summary::Exists(n), Response::Data(Data::Exists(m))) => {
            if n != m {
                differ();
            }
        }
        (Summary::Search(ours_uids), Response::Data(Data::Search(theirs_uids))) => {
            let theirs_uids: Vec<u32> = theirs_uids.iter().map(|n| n.get()).collect();
            if *ours_uids != theirs_uids {
                differ();
            }
        }
        (Summary::Capability(_), Response::Data(Data::Capability(_))) => {}
        (
            Summary::Fetch {
                seq,
                uid,
                size,
                body,
                origin,
            },
            Response::Data(Data::Fetch {
                seq: their_seq,
                items,
            }),
        ) => {
            if *seq != their_seq.get() {
                differ();
            }
            for item in items.as_ref() {
                match item {
                    MessageDataItem::Uid(u) if *uid != Some(u.get()) => differ(),
                    MessageDataItem::Rfc822Size(s) if *size != Some(u64::from(*s)) => differ(),
                    MessageDataItem::BodyExt {
                        section: None,
                        origin: their_origin,
                        data,
                    } if *body != Some(bytes(data))
                        || *origin != u64::from(their_origin.unwrap_or(0)) =>
                    {
                        differ()
                    }
                    _ => {}
                }
            }
        }
        (
            Summary::List { attributes, name },
            Response::Data(Data::List {
                items,
                mailbox,
                ..
            }),
        ) => {
            let theirs: Vec<String> = items
                .iter()
                .map(|a| a.to_string().to_ascii_uppercase())
                .collect();
            let same_name = match mailbox {
                Mailbox::Inbox => name.eq_ignore_ascii_case(b"INBOX"),
                Mailbox::Other(other) => other.as_ref() == name.as_slice(),
            };
            if *attributes != theirs || !same_name {
                differ();
            }
        }
        // Data we skip (FLAGS, LSUB, EXPUNGE...) is whatever it is.
        (Summary::Other, Response::Data(_)) => {}
        _ => differ(),
    }
}
