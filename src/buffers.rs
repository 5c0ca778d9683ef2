//! Recycles the large byte buffers a message transfer passes through.
//!
//! Each piece of a body goes through two buffers of up to `FETCH_CHUNK`
//! bytes (as read from the backend, then dot-stuffed for the client).
//! Allocating and freeing them for every piece makes the allocator hand the
//! memory back to the kernel and fault it in again: glibc trims its heap
//! with `brk`, musl unmaps the block (measured: about two `brk`, or two
//! `mmap` and two `munmap`, per message of a 1,000-message download). A
//! session is one thread, so a few spare buffers per thread are enough.

use std::cell::RefCell;

use crate::limits::{SPARE_BUFFER_MAX, SPARE_BUFFER_MIN, SPARE_BUFFERS};

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes: a spare one
/// when the request is large enough to be worth it.
pub fn take(capacity: usize) -> Vec<u8> {
    if capacity < SPARE_BUFFER_MIN {
        return Vec::with_capacity(capacity);
    }
    // The largest: buffers then settle at the largest size a session
    // needs instead of each growing (and moving) in turn.
    let spare = SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        let largest = (0..spare.len()).max_by_key(|&i| spare[i].capacity())?;
        Some(spare.swap_remove(largest))
    });
    match spare {
        Some(mut buf) => {
            buf.clear();
            buf.reserve(capacity);
            buf
        }
        None => Vec::with_capacity(capacity),
    }
}

/// Keeps `buf` for a later `take`, if it is big enough to be worth keeping
/// and small enough not to pin memory a session no longer needs.
pub fn give(buf: Vec<u8>) {
    let cap = buf.capacity();
    if !(SPARE_BUFFER_MIN..=SPARE_BUFFER_MAX).contains(&cap) {
        return;
    }
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_memory() {
        let mut buf = Vec::with_capacity(SPARE_BUFFER_MIN * 2);
        buf.extend_from_slice(b"old bytes");
        let ptr = buf.as_ptr();
        give(buf);
        let again = take(SPARE_BUFFER_MIN);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.capacity() >= SPARE_BUFFER_MIN * 2);
    }

    #[test]
    fn small_and_huge_buffers_are_not_kept() {
        give(Vec::with_capacity(16));
        give(Vec::with_capacity(SPARE_BUFFER_MAX + 1));
        assert_eq!(SPARE.with(|s| s.borrow().len()), 0);
    }

    #[test]
    fn at_most_spare_buffers_are_kept() {
        for _ in 0..SPARE_BUFFERS + 3 {
            give(Vec::with_capacity(SPARE_BUFFER_MIN));
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARE_BUFFERS);
    }

    #[test]
    fn the_largest_spare_buffer_is_taken_first() {
        give(Vec::with_capacity(SPARE_BUFFER_MIN));
        give(Vec::with_capacity(SPARE_BUFFER_MIN * 3));
        give(Vec::with_capacity(SPARE_BUFFER_MIN * 2));
        assert!(take(SPARE_BUFFER_MIN).capacity() >= SPARE_BUFFER_MIN * 3);
        assert!(take(SPARE_BUFFER_MIN).capacity() >= SPARE_BUFFER_MIN * 2);
    }

    #[test]
    fn a_spare_buffer_grows_to_what_is_asked() {
        give(Vec::with_capacity(SPARE_BUFFER_MIN));
        let buf = take(SPARE_BUFFER_MIN * 4);
        assert!(buf.capacity() >= SPARE_BUFFER_MIN * 4);
    }
}
