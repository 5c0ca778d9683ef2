//! A folder's snapshot with the snapshot cache (see `sizecache`): sizes,
//! and header digests, merged from the cache where it has them and from
//! the backend for the rest. The merges are pure functions over lists
//! sorted by UID (each lookup a step, not a search); around them, the
//! reads of the cache files and the IMAP commands that fill the gaps. It
//! selects no folder and classifies no error: that is `imap`'s.

use log::{debug, warn};

use crate::imap::{Client, ImapError, Selected};
use crate::maildrop::BackendMessage;
use crate::maildrop::sizecache::{DigestCache, SizeCache};
use crate::maildrop::uidl::{self, HeaderDigest};

/// For each of `uids`, its size from `cached` if the cache has it. Both
/// sorted by UID.
pub fn cached_sizes(uids: &[u32], cached: &[(u32, u64)]) -> Vec<Option<u64>> {
    let mut from_cache = cached.iter().peekable();
    uids.iter()
        .map(|&uid| {
            while from_cache.next_if(|&&(u, _)| u < uid).is_some() {}
            from_cache
                .next_if(|&&(u, _)| u == uid)
                .map(|&(_, size)| size)
        })
        .collect()
}

/// The UIDs whose size the cache lacks: the backend is asked for these.
pub fn sizes_missing(uids: &[u32], known: &[Option<u64>]) -> Vec<u32> {
    uids.iter()
        .zip(known)
        .filter(|(_, size)| size.is_none())
        .map(|(&uid, _)| uid)
        .collect()
}

/// The snapshot in message-number order: each UID with its size from the
/// cache (`known`) or from the backend (`fetched`, in any order). A UID
/// the backend gave no size for was expunged between the two commands and
/// drops out.
pub fn merge_sizes(
    uids: Vec<u32>,
    known: Vec<Option<u64>>,
    mut fetched: Vec<BackendMessage>,
) -> Vec<BackendMessage> {
    fetched.sort_unstable_by_key(|m| m.uid);
    let mut from_backend = fetched.iter().peekable();
    uids.into_iter()
        .zip(known)
        .filter_map(|(uid, size)| {
            while from_backend.next_if(|m| m.uid < uid).is_some() {}
            let size = size.or_else(|| from_backend.next_if(|m| m.uid == uid).map(|m| m.size))?;
            Some(BackendMessage { uid, size })
        })
        .collect()
}

/// Whether the cache already holds exactly this snapshot: then it is not
/// written again.
pub fn sizes_unchanged(cached: &[(u32, u64)], messages: &[BackendMessage]) -> bool {
    cached.len() == messages.len()
        && cached
            .iter()
            .zip(messages)
            .all(|(&(uid, size), m)| uid == m.uid && size == m.size)
}

/// The digests of `wanted` (in any order, repeats allowed) that the cache
/// has, and the UIDs it lacks, both sorted by UID. UIDs the cache has but
/// the folder no longer does drop out.
pub fn cached_digests(
    wanted: &[u32],
    cached: &[(u32, HeaderDigest)],
) -> (Vec<(u32, HeaderDigest)>, Vec<u32>) {
    let mut wanted = wanted.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut known = Vec::with_capacity(wanted.len());
    let mut missing = Vec::new();
    let mut from_cache = cached.iter().peekable();
    for uid in wanted {
        while from_cache.next_if(|&&(u, _)| u < uid).is_some() {}
        match from_cache.next_if(|&&(u, _)| u == uid) {
            Some(&entry) => known.push(entry),
            None => missing.push(uid),
        }
    }
    (known, missing)
}

/// The digests from the cache and those fetched, sorted by UID. Of two for
/// one UID the first stays, as in `Maildrop::set_facts`.
pub fn merge_digests(
    mut known: Vec<(u32, HeaderDigest)>,
    fetched: Vec<(u32, HeaderDigest)>,
) -> Vec<(u32, HeaderDigest)> {
    known.extend(fetched);
    // Stable, so that the first of two stays.
    known.sort_by_key(|&(uid, _)| uid);
    known.dedup_by_key(|&mut (uid, _)| uid);
    known
}

/// The UID list (`uids`, or asked now), sizes from `cached` where it has
/// them and from the backend for the rest, in message-number order.
pub fn listed_with(
    client: &mut Client,
    selected: &Selected,
    uids: Option<Vec<u32>>,
    cached: &[(u32, u64)],
) -> Result<Vec<BackendMessage>, ImapError> {
    let uids = match uids {
        Some(uids) => uids,
        None => match client.uids(selected)? {
            Some(uids) => uids,
            None => return client.snapshot(selected),
        },
    };
    let known = cached_sizes(&uids, cached);
    let missing = sizes_missing(&uids, &known);
    let fetched = if missing.is_empty() {
        Vec::new()
    } else {
        client.sizes(&missing)?
    };
    Ok(merge_sizes(uids, known, fetched))
}

/// The header digests of `missing` (sorted), by one `UID FETCH`; each
/// header is reduced to its digest as it arrives.
pub fn fetch_digests(
    client: &mut Client,
    missing: &[u32],
) -> Result<Vec<(u32, HeaderDigest)>, ImapError> {
    let mut fetched = Vec::with_capacity(missing.len());
    client.fetch_headers(missing, |uid, header| {
        // Only what was asked for goes into the answer and the file.
        if missing.binary_search(&uid).is_ok() {
            fetched.push((uid, uidl::header_digest(header)));
        }
    })?;
    Ok(fetched)
}

/// The cached sizes for `uid_validity`, if the cache has them.
pub fn load_sizes(cache: Option<&SizeCache>, uid_validity: u32) -> Option<Vec<(u32, u64)>> {
    cache?
        .load(uid_validity)
        .inspect_err(|why| debug!("snapshot cache not used: {why}"))
        .ok()
}

/// Writes the snapshot to the cache, unless the cache holds it already.
pub fn store_sizes(
    cache: &SizeCache,
    uid_validity: u32,
    cached: Option<&[(u32, u64)]>,
    messages: &[BackendMessage],
) {
    if cached.is_some_and(|sizes| sizes_unchanged(sizes, messages)) {
        return;
    }
    let sizes: Vec<(u32, u64)> = messages.iter().map(|m| (m.uid, m.size)).collect();
    if let Err(e) = cache.store(uid_validity, &sizes) {
        warn!(
            "cannot write the snapshot cache {}: {e}; check that cache_dir exists and is \
             writable by the service user, or set snapshot_cache = false",
            cache.path().display()
        );
    }
}

/// Replaces the cached sizes of `learned` (sorted by UID) with the true
/// ones, where the cache has those UIDs; `true` if anything changed.
pub fn patch_sizes(cached: &mut [(u32, u64)], learned: &[(u32, u64)]) -> bool {
    let mut changed = false;
    let mut from_learned = learned.iter().peekable();
    for (uid, size) in cached.iter_mut() {
        while from_learned.next_if(|&&(u, _)| u < *uid).is_some() {}
        if let Some(&(_, true_size)) = from_learned.next_if(|&&(u, _)| u == *uid)
            && *size != true_size
        {
            *size = true_size;
            changed = true;
        }
    }
    changed
}

/// Writes the sizes learned in a session, (folder, UIDVALIDITY, UID, true
/// size), into each folder's cache (`cache_of`; none without
/// `snapshot_cache`).
pub fn keep_learned(
    learned: &[(usize, u32, u32, u64)],
    cache_of: impl Fn(usize) -> Option<SizeCache>,
) {
    let mut sorted = learned.to_vec();
    sorted.sort_unstable();
    for chunk in sorted.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
        let (folder, uid_validity) = (chunk[0].0, chunk[0].1);
        let Some(cache) = cache_of(folder) else {
            return;
        };
        let sizes: Vec<(u32, u64)> = chunk.iter().map(|&(_, _, uid, size)| (uid, size)).collect();
        keep_learned_sizes(&cache, uid_validity, &sizes);
    }
}

/// Writes sizes learned from whole bodies into the cache of `uid_validity`,
/// if it holds those messages (a cache written for another UIDVALIDITY,
/// or none, is left alone).
pub fn keep_learned_sizes(cache: &SizeCache, uid_validity: u32, learned: &[(u32, u64)]) {
    let Ok(mut sizes) = cache.load(uid_validity) else {
        return;
    };
    if !patch_sizes(&mut sizes, learned) {
        return;
    }
    if let Err(e) = cache.store(uid_validity, &sizes) {
        warn!(
            "cannot write the snapshot cache {}: {e}; check that cache_dir exists and is \
             writable by the service user, or set snapshot_cache = false",
            cache.path().display()
        );
    }
}

/// The cached digests for `uid_validity`; none if the cache has none.
pub fn load_digests(cache: Option<&DigestCache>, uid_validity: u32) -> Vec<(u32, HeaderDigest)> {
    cache
        .and_then(|c| {
            c.load(uid_validity)
                .inspect_err(|why| debug!("header digest cache not used: {why}"))
                .ok()
        })
        .unwrap_or_default()
}

/// Writes exactly this folder's digests to the cache, if they changed.
pub fn store_digests(
    cache: &DigestCache,
    uid_validity: u32,
    cached: &[(u32, HeaderDigest)],
    digests: &[(u32, HeaderDigest)],
) {
    if digests == cached {
        return;
    }
    if let Err(e) = cache.store(uid_validity, digests) {
        warn!(
            "cannot write the header digest cache {}: {e}; check that cache_dir exists and is \
             writable by the service user, or set snapshot_cache = false",
            cache.path().display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::HEADER_DIGEST_BYTES;

    fn m(uid: u32, size: u64) -> BackendMessage {
        BackendMessage { uid, size }
    }

    fn d(n: u8) -> HeaderDigest {
        HeaderDigest([n; HEADER_DIGEST_BYTES])
    }

    #[test]
    fn sizes_come_from_the_cache_where_it_has_them() {
        let uids = [3, 5, 8, 13];
        let cached = [(1, 100), (3, 300), (8, 800), (21, 2100)];
        let known = cached_sizes(&uids, &cached);
        assert_eq!(known, [Some(300), None, Some(800), None]);
        assert_eq!(sizes_missing(&uids, &known), [5, 13]);
    }

    #[test]
    fn an_empty_cache_leaves_every_size_to_the_backend() {
        let uids = [1, 2];
        let known = cached_sizes(&uids, &[]);
        assert_eq!(known, [None, None]);
        assert_eq!(sizes_missing(&uids, &known), [1, 2]);
        assert!(cached_sizes(&[], &[(1, 10)]).is_empty());
    }

    #[test]
    fn fetched_sizes_fill_the_gaps_in_message_number_order() {
        let uids = vec![3, 5, 8, 13];
        let known = vec![Some(300), None, Some(800), None];
        // The backend answers in any order.
        let fetched = vec![m(13, 1300), m(5, 500)];
        assert_eq!(
            merge_sizes(uids, known, fetched),
            [m(3, 300), m(5, 500), m(8, 800), m(13, 1300)]
        );
    }

    #[test]
    fn a_message_expunged_between_the_uid_list_and_its_size_drops_out() {
        let uids = vec![3, 5, 8];
        let known = vec![Some(300), None, None];
        // 5 is gone; the backend also answers for a UID nobody asked about.
        let fetched = vec![m(8, 800), m(7, 700)];
        assert_eq!(merge_sizes(uids, known, fetched), [m(3, 300), m(8, 800)]);
    }

    #[test]
    fn the_size_cache_is_rewritten_only_when_the_snapshot_differs() {
        let messages = [m(3, 300), m(5, 500)];
        assert!(sizes_unchanged(&[(3, 300), (5, 500)], &messages));
        assert!(!sizes_unchanged(&[(3, 300)], &messages));
        assert!(!sizes_unchanged(&[(3, 300), (5, 501)], &messages));
        assert!(!sizes_unchanged(&[(3, 300), (6, 500)], &messages));
        assert!(sizes_unchanged(&[], &[]));
    }

    #[test]
    fn digests_come_from_the_cache_where_it_has_them_and_the_rest_are_asked() {
        let cached = [(1, d(1)), (3, d(3)), (8, d(8))];
        // Unsorted, with a repeat: asked once each, in UID order.
        let (known, missing) = cached_digests(&[8, 5, 3, 5, 13], &cached);
        assert_eq!(known, [(3, d(3)), (8, d(8))]);
        assert_eq!(missing, [5, 13]);
    }

    #[test]
    fn cached_digests_of_messages_no_longer_there_drop_out() {
        let cached = [(1, d(1)), (2, d(2))];
        let (known, missing) = cached_digests(&[2], &cached);
        assert_eq!(known, [(2, d(2))]);
        assert!(missing.is_empty());
    }

    #[test]
    fn fetched_digests_join_the_cached_ones_in_uid_order_and_the_first_of_two_stays() {
        let known = vec![(3, d(3)), (8, d(8))];
        let fetched = vec![(13, d(13)), (5, d(5)), (5, d(55))];
        assert_eq!(
            merge_digests(known, fetched),
            [(3, d(3)), (5, d(5)), (8, d(8)), (13, d(13))]
        );
        assert_eq!(merge_digests(Vec::new(), Vec::new()), []);
    }

    #[test]
    fn learned_sizes_replace_the_cached_estimates_of_their_uids_only() {
        let mut cached = vec![(3, 900), (5, 1200), (9, 40)];
        assert!(patch_sizes(
            &mut cached,
            &[(1, 7), (5, 400), (9, 40), (11, 5)]
        ));
        assert_eq!(cached, [(3, 900), (5, 400), (9, 40)]);
        assert!(!patch_sizes(&mut cached, &[(5, 400)]), "nothing new");
        assert!(!patch_sizes(&mut cached, &[]));
    }
}
