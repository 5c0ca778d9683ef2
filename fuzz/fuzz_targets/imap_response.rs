//! The IMAP response reader and parser on arbitrary server bytes: never a
//! panic, bounded memory (the reader's own limits), and the same responses
//! however the bytes are split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop3server::imap::fuzzing::parse_responses;

fuzz_target!(|data: &[u8]| {
    let Some((&k, input)) = data.split_first() else {
        return;
    };
    let whole = parse_responses(input, usize::MAX);
    let split = parse_responses(input, usize::from(k % 16) + 1);
    assert_eq!(
        whole, split,
        "the result depends on how the bytes were split"
    );
});
