//! The snapshot cache: for one mailbox and folder, the size of each message
//! by UID, with the folder's UIDVALIDITY. An IMAP message never changes, so
//! for the same UIDVALIDITY a UID's size stays true for ever; a session that
//! finds the cache asks the backend only for the UID list and the sizes of
//! UIDs the cache lacks, instead of one size per message (for 10,000
//! messages that is most of a session's time at the backend).
//!
//! One file per mailbox and folder, named by a digest (no user or folder
//! name reaches the file system), holding UIDs and sizes and nothing else,
//! mode 0600. Written to a temporary file and renamed, by the session that
//! holds the maildrop lock. Anything unexpected in a file (another format,
//! another UIDVALIDITY, a count that does not match, UIDs out of order, a
//! cut end) makes it count as absent: the session then takes the full
//! snapshot, never a wrong size.
//!
//! [`DigestCache`] keeps, the same way and by the same rules, the header
//! digests of `uidl_format = header-digest` by UID: a message's header, and
//! so its digest, never changes for the same UIDVALIDITY either, and the
//! next session's first UIDL then fetches only the headers of new mail.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::decimal::parse_u64;
use crate::limits::{
    DIGEST_CACHE_MAX_LINE, HEADER_DIGEST_BYTES, MAX_MESSAGES, SIZE_CACHE_MAX_LINE,
};
use crate::maildrop::uidl::HeaderDigest;

const MAGIC: &str = "pop3server-sizes 1";
/// The version names the digest's definition too (`uidl::header_digest`):
/// a change to it must come with a new version, or old files would give
/// the old digests.
const DIGEST_MAGIC: &str = "pop3server-header-digests 1";

pub struct SizeCache {
    path: PathBuf,
}

impl SizeCache {
    /// The cache of `folder` of the maildrop whose lock is `lock_name` (the
    /// backend and the IMAP identity, as `lock::lock_name` makes it).
    pub fn new(dir: &Path, lock_name: &str, folder: &str) -> Self {
        SizeCache {
            path: dir.join(format!("sizes-{}", file_name(lock_name, folder))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached (UID, size) pairs, UIDs ascending, if the file exists, is
    /// whole, and is for `uid_validity`; `Err` says why it is not used (for
    /// the debug log).
    pub fn load(&self, uid_validity: u32) -> Result<Vec<(u32, u64)>, String> {
        let text = read(&self.path, SIZE_CACHE_MAX_LINE)?;
        parse(&text, uid_validity)
    }

    /// Replaces the file with exactly these sizes (temporary file, rename).
    pub fn store(&self, uid_validity: u32, sizes: &[(u32, u64)]) -> io::Result<()> {
        let mut text = format!(
            "{MAGIC}\nuidvalidity {uid_validity}\ncount {}\n",
            sizes.len()
        );
        // 10,000 entries for a big maildrop: digits without `format!`.
        text.reserve(sizes.len() * 16);
        let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
        for &(uid, size) in sizes {
            text.push_str(a.format(uid));
            text.push(' ');
            text.push_str(b.format(size));
            text.push('\n');
        }
        text.push_str("end\n");
        write_atomic(&self.path, &text)
    }
}

/// The header digests of one mailbox's folder by UID (see the module).
pub struct DigestCache {
    path: PathBuf,
}

impl DigestCache {
    pub fn new(dir: &Path, lock_name: &str, folder: &str) -> Self {
        DigestCache {
            path: dir.join(format!("digests-{}", file_name(lock_name, folder))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached (UID, digest) pairs, UIDs ascending, on the same terms as
    /// `SizeCache::load`.
    pub fn load(&self, uid_validity: u32) -> Result<Vec<(u32, HeaderDigest)>, String> {
        let text = read(&self.path, DIGEST_CACHE_MAX_LINE)?;
        parse_digests(&text, uid_validity)
    }

    /// Replaces the file with exactly these digests, UIDs ascending.
    pub fn store(&self, uid_validity: u32, digests: &[(u32, HeaderDigest)]) -> io::Result<()> {
        let mut text = format!(
            "{DIGEST_MAGIC}\nuidvalidity {uid_validity}\ncount {}\n",
            digests.len()
        );
        use std::fmt::Write as _;
        text.reserve(digests.len() * (12 + 2 * HEADER_DIGEST_BYTES));
        let mut digits = itoa::Buffer::new();
        for (uid, d) in digests {
            text.push_str(digits.format(*uid));
            text.push(' ');
            for b in d.0 {
                let _ = write!(text, "{b:02x}");
            }
            text.push('\n');
        }
        text.push_str("end\n");
        write_atomic(&self.path, &text)
    }
}

/// A digest of the maildrop's lock name and the folder: no user or folder
/// name reaches the file system.
fn file_name(lock_name: &str, folder: &str) -> String {
    let mut h = Md5::new();
    h.update(lock_name.as_bytes());
    h.update([0]);
    h.update(folder.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The file's text, at most as much as `MAX_MESSAGES` lines of `max_line`
/// bytes can be (a huge file is not read whole, and then fails to parse).
fn read(path: &Path, max_line: usize) -> Result<String, String> {
    let limit = (MAX_MESSAGES as u64 + 4) * max_line as u64;
    let file = fs::File::open(path).map_err(|e| e.to_string())?;
    // Sized from the file (`take` hides its length, and the string would
    // grow from 32 bytes in a dozen reads), one byte more to see its end.
    let expected = file.metadata().map_or(0, |m| m.len().min(limit)) + 1;
    let mut text = String::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// Written to a temporary file, mode 0600, and renamed: a reader sees the
/// old file or the new one, never a part.
fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_file_name(format!(".tmp-{}", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn parse(text: &str, uid_validity: u32) -> Result<Vec<(u32, u64)>, String> {
    parse_entries(text, MAGIC, uid_validity, |value| {
        parse_u64(value.as_bytes()).ok_or("bad size")
    })
}

fn parse_digests(text: &str, uid_validity: u32) -> Result<Vec<(u32, HeaderDigest)>, String> {
    parse_entries(text, DIGEST_MAGIC, uid_validity, |value| {
        let hex = value.as_bytes();
        if hex.len() != 2 * HEADER_DIGEST_BYTES {
            return Err("bad digest length");
        }
        let mut d = [0u8; HEADER_DIGEST_BYTES];
        for (i, pair) in hex.chunks(2).enumerate() {
            let digit = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            d[i] = match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => h << 4 | l,
                _ => return Err("bad digest"),
            };
        }
        Ok(HeaderDigest(d))
    })
}

/// `text.split('\n')` by a plain scan: the lines are short, and a file
/// has up to 10,000 of them, where the generic searcher's set-up per line
/// cost more than the scan.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.bytes().position(|b| b == b'\n') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// The entries of a cache file: its magic line, UIDVALIDITY, count, then
/// `count` lines `<uid> <value>` with UIDs ascending, then `end`.
fn parse_entries<T>(
    text: &str,
    magic: &str,
    uid_validity: u32,
    value: impl Fn(&str) -> Result<T, &'static str>,
) -> Result<Vec<(u32, T)>, String> {
    let mut lines = split_lines(text);
    if lines.next() != Some(magic) {
        return Err("not a cache file of this version".into());
    }
    let field = |line: Option<&str>, name: &str| -> Result<u64, String> {
        line.and_then(|l| l.strip_prefix(name))
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| parse_u64(v.as_bytes()))
            .ok_or_else(|| format!("no {name} line"))
    };
    let cached_validity = field(lines.next(), "uidvalidity")?;
    if cached_validity != u64::from(uid_validity) {
        return Err(format!(
            "UIDVALIDITY changed from {cached_validity} to {uid_validity}"
        ));
    }
    let count = field(lines.next(), "count")?;
    if count > u64::from(MAX_MESSAGES) {
        return Err("count over the limit".into());
    }
    // Bounded by MAX_MESSAGES above, whatever the file claims.
    let mut sizes = Vec::with_capacity(count as usize);
    let mut last = 0u32;
    for _ in 0..count {
        let line = lines.next().ok_or("cut short")?;
        let space = line.bytes().position(|b| b == b' ').ok_or("bad entry")?;
        let (uid, size) = (&line[..space], &line[space + 1..]);
        let uid = parse_u64(uid.as_bytes())
            .and_then(|u| u32::try_from(u).ok())
            .ok_or("bad UID")?;
        let size = value(size)?;
        if uid <= last {
            return Err("UIDs out of order".into());
        }
        last = uid;
        sizes.push((uid, size));
    }
    if lines.next() != Some("end") || lines.next() != Some("") || lines.next().is_some() {
        return Err("no end marker".into());
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_as_str_split_does() {
        for text in ["", "\n", "a", "a\n", "a\nb", "a\n\nb\n", "é x\n1 2\nend\n"] {
            let ours: Vec<&str> = split_lines(text).collect();
            let std: Vec<&str> = text.split('\n').collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sizecache-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn what_is_stored_is_loaded_for_the_same_uidvalidity_only() {
        let dir = temp_dir("roundtrip");
        let cache = SizeCache::new(&dir, "lock", "INBOX");
        cache
            .store(7, &[(1, 10), (5, 0), (9, 123_456_789_012)])
            .expect("store");
        let sizes = cache.load(7).expect("load");
        assert_eq!(sizes, vec![(1, 10), (5, 0), (9, 123_456_789_012)]);
        assert!(cache.load(8).unwrap_err().contains("UIDVALIDITY changed"));
        let mode = fs::metadata(cache.path()).expect("meta").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn folders_and_mailboxes_have_files_of_their_own() {
        let dir = Path::new("/nonexistent");
        let a = SizeCache::new(dir, "lock-a", "INBOX");
        assert_ne!(a.path(), SizeCache::new(dir, "lock-b", "INBOX").path());
        assert_ne!(a.path(), SizeCache::new(dir, "lock-a", "Archive").path());
        assert!(!a.path().to_string_lossy().contains("INBOX"));
    }

    #[test]
    fn any_damage_makes_the_file_count_as_absent() {
        let good = format!("{MAGIC}\nuidvalidity 7\ncount 2\n1 10\n2 20\nend\n");
        assert!(parse(&good, 7).is_ok());
        for bad in [
            String::new(),
            good.replace("sizes 1", "sizes 2"),
            good.replace("count 2", "count 3"),
            good.replace("count 2", "count 1"),
            good.replace("2 20", "1 20"),
            good.replace("2 20", "2 -20"),
            good.replace("2 20", "2"),
            good.replace("end\n", ""),
            good.replace("end\n", "end"),
            good.replace("end\n", "end\n3 30\n"),
            good[..good.len() / 2].to_string(),
            good.replace("uidvalidity 7", "uidvalidity x"),
        ] {
            assert!(parse(&bad, 7).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn digests_round_trip_and_any_damage_makes_them_absent() {
        let dir = temp_dir("digests");
        let cache = DigestCache::new(&dir, "lock", "INBOX");
        assert_ne!(
            cache.path(),
            SizeCache::new(&dir, "lock", "INBOX").path(),
            "a file of its own"
        );
        let a = crate::maildrop::uidl::header_digest(b"Subject: a\r\n");
        let b = crate::maildrop::uidl::header_digest(b"Subject: b\r\n");
        cache.store(7, &[(1, a), (4, b)]).expect("store");
        assert_eq!(cache.load(7).expect("load"), vec![(1, a), (4, b)]);
        assert!(cache.load(8).is_err());
        let mode = fs::metadata(cache.path()).expect("meta").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let good = fs::read_to_string(cache.path()).expect("text");
        assert!(parse_digests(&good, 7).is_ok());
        let line = good.lines().nth(3).expect("an entry").to_string();
        for bad in [
            good.replace(DIGEST_MAGIC, MAGIC),
            good.replace(&line, &line[..line.len() - 1]),
            good.replace(&line, &format!("{line}0")),
            good.replace(&line, &line.to_uppercase()),
            good.replace(&line, &line.replace(' ', "  ")),
            good.replace("count 2", "count 3"),
            good.replace("end\n", ""),
            good[..good.len() / 2].to_string(),
        ] {
            assert!(parse_digests(&bad, 7).is_err(), "{bad:?} was taken");
        }
        // A sizes file is not a digests file, nor the other way round.
        assert!(parse(&good, 7).is_err());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        let cache = SizeCache::new(Path::new("/nonexistent/dir"), "l", "INBOX");
        assert!(cache.load(1).is_err());
        assert!(cache.store(1, &[(1, 1)]).is_err());
    }
}
