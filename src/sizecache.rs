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

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

use crate::decimal::parse_u64;
use crate::limits::{MAX_MESSAGES, SIZE_CACHE_MAX_LINE};

const MAGIC: &str = "pop3server-sizes 1";

pub struct SizeCache {
    path: PathBuf,
}

impl SizeCache {
    /// The cache of `folder` of the maildrop whose lock is `lock_name` (the
    /// backend and the IMAP identity, as `lock::lock_name` makes it).
    pub fn new(dir: &Path, lock_name: &str, folder: &str) -> Self {
        let mut h = Md5::new();
        h.update(lock_name.as_bytes());
        h.update([0]);
        h.update(folder.as_bytes());
        let name: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        SizeCache {
            path: dir.join(format!("sizes-{name}")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached (UID, size) pairs, UIDs ascending, if the file exists, is
    /// whole, and is for `uid_validity`; `Err` says why it is not used (for
    /// the debug log).
    pub fn load(&self, uid_validity: u32) -> Result<Vec<(u32, u64)>, String> {
        let limit = (MAX_MESSAGES as u64 + 4) * SIZE_CACHE_MAX_LINE as u64;
        let mut text = String::new();
        fs::File::open(&self.path)
            .and_then(|f| f.take(limit).read_to_string(&mut text))
            .map_err(|e| e.to_string())?;
        parse(&text, uid_validity)
    }

    /// Replaces the file with exactly these sizes (temporary file, rename).
    pub fn store(&self, uid_validity: u32, sizes: &[(u32, u64)]) -> io::Result<()> {
        let mut text = format!(
            "{MAGIC}\nuidvalidity {uid_validity}\ncount {}\n",
            sizes.len()
        );
        for (uid, size) in sizes {
            text.push_str(&format!("{uid} {size}\n"));
        }
        text.push_str("end\n");
        let tmp = self
            .path
            .with_file_name(format!(".tmp-{}", std::process::id()));
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

fn parse(text: &str, uid_validity: u32) -> Result<Vec<(u32, u64)>, String> {
    let mut lines = text.split('\n');
    if lines.next() != Some(MAGIC) {
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
        let (uid, size) = line.split_once(' ').ok_or("bad entry")?;
        let uid = parse_u64(uid.as_bytes())
            .and_then(|u| u32::try_from(u).ok())
            .ok_or("bad UID")?;
        let size = parse_u64(size.as_bytes()).ok_or("bad size")?;
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
    fn a_missing_file_is_an_error_not_a_panic() {
        let cache = SizeCache::new(Path::new("/nonexistent/dir"), "l", "INBOX");
        assert!(cache.load(1).is_err());
        assert!(cache.store(1, &[(1, 1)]).is_err());
    }
}
