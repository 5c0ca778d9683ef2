//! Leaving root before a session reads a byte. A process that parses hostile
//! network input and holds users' passwords must not do it with full
//! privileges: started as root (a listener on port 110 without systemd, an
//! inetd line with `root`), a session process switches to the configured
//! unprivileged user once it has read what only root may read, and proves
//! it cannot switch back. Processes that are not root are left alone (the
//! systemd units already start sessions as `pop3server`).

use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::unistd::{Gid, Group, Uid, User};

/// The account sessions run as, looked up in the user database.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub group: String,
    pub uid: Uid,
    pub gid: Gid,
}

#[derive(Debug)]
pub enum PrivilegeError {
    NoSuchUser(String),
    NoSuchGroup(String),
    /// `user` (or `group`) names root itself.
    IsRoot(String),
    Lookup {
        name: String,
        error: nix::Error,
    },
    Directory {
        path: PathBuf,
        error: io::Error,
    },
    Switch {
        step: &'static str,
        error: String,
    },
    /// After the switch, root could still be regained.
    StillPrivileged,
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegeError::NoSuchUser(name) => write!(
                f,
                "user = \"{name}\": no such user. Sessions started as root switch to it: \
                 create it (useradd --system --user-group --no-create-home {name}) \
                 or set user to an existing unprivileged account"
            ),
            PrivilegeError::NoSuchGroup(name) => write!(
                f,
                "group = \"{name}\": no such group: create it or set group to an existing one"
            ),
            PrivilegeError::IsRoot(what) => write!(
                f,
                "{what} is root: sessions never run as root; set user (and group) \
                 to an unprivileged account such as pop3server"
            ),
            PrivilegeError::Lookup { name, error } => {
                write!(f, "cannot look up {name} in the user database: {error}")
            }
            PrivilegeError::Directory { path, error } => write!(
                f,
                "cannot prepare {} for the session user: {error}",
                path.display()
            ),
            PrivilegeError::Switch { step, error } => {
                write!(f, "cannot drop root privileges ({step}): {error}")
            }
            PrivilegeError::StillPrivileged => write!(
                f,
                "after switching user the process could become root again: refusing to serve"
            ),
        }
    }
}

impl std::error::Error for PrivilegeError {}

/// Who a session process becomes, and the directories it writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: String,
    /// The user's primary group when `None`.
    pub group: Option<String>,
    pub lock_dir: PathBuf,
    /// The snapshot cache, if it is on.
    pub cache_dir: Option<PathBuf>,
    /// The token state, only where device logins or token sources use it:
    /// other setups never touch (or create) it.
    pub state_dir: Option<PathBuf>,
}

/// Whether this process has root's privileges and must shed them.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For a session process: if it is root, hands the directories sessions
/// write to (locks, the snapshot cache, device state) to the configured
/// user and becomes that user. Returns who it
/// became, or `None` when it was not root to begin with.
pub fn leave_root(account: &Account) -> Result<Option<Identity>, PrivilegeError> {
    if !is_root() {
        return Ok(None);
    }
    let id = resolve(&account.user, account.group.as_deref())?;
    adopt_dir(&id, &account.lock_dir, 0o750)?;
    // The cache only saves time: a session goes on without it (and says
    // why when it cannot write it).
    if let Some(cache_dir) = &account.cache_dir
        && let Err(e) = adopt_dir(&id, cache_dir, 0o700)
    {
        log::warn!("snapshot cache: {e}");
    }
    if let Some(state_dir) = &account.state_dir {
        adopt_dir(&id, state_dir, 0o700)?;
    }
    switch_to(&id)?;
    Ok(Some(id))
}

/// Looks up `user` and `group` (the user's primary group when `None`).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, PrivilegeError> {
    let lookup = |error| PrivilegeError::Lookup {
        name: user.to_string(),
        error,
    };
    let account = User::from_name(user)
        .map_err(lookup)?
        .ok_or_else(|| PrivilegeError::NoSuchUser(user.to_string()))?;
    if account.uid.is_root() {
        return Err(PrivilegeError::IsRoot(format!("user = \"{user}\"")));
    }
    let (group_name, gid) = match group {
        Some(name) => {
            let g = Group::from_name(name)
                .map_err(|error| PrivilegeError::Lookup {
                    name: name.to_string(),
                    error,
                })?
                .ok_or_else(|| PrivilegeError::NoSuchGroup(name.to_string()))?;
            (g.name, g.gid)
        }
        None => {
            let name = Group::from_gid(account.gid)
                .ok()
                .flatten()
                .map(|g| g.name)
                .unwrap_or_else(|| account.gid.to_string());
            (name, account.gid)
        }
    };
    if gid.as_raw() == 0 {
        return Err(PrivilegeError::IsRoot(format!("group \"{group_name}\"")));
    }
    Ok(Identity {
        user: account.name,
        group: group_name,
        uid: account.uid,
        gid,
    })
}

/// Makes `dir` (created with `mode` if missing) the session user's. A
/// directory taken over from another owner (state left by a version that
/// ran sessions as root) has its entries taken over too, one level deep
/// and one more for subdirectories: enough for the lock and token files,
/// and bounded, because this runs for every session.
pub fn adopt_dir(id: &Identity, dir: &Path, mode: u32) -> Result<(), PrivilegeError> {
    let fail = |path: &Path, error| PrivilegeError::Directory {
        path: path.to_path_buf(),
        error,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| fail(dir, e))?;
    let meta = fs::metadata(dir).map_err(|e| fail(dir, e))?;
    if meta.uid() == id.uid.as_raw() && meta.gid() == id.gid.as_raw() {
        return Ok(());
    }
    hand_over(id, dir)
}

/// Gives `dir`, its entries and those of its subdirectories to `id` (for
/// files root wrote on the sessions' behalf, e.g. `--oauth-consent`).
pub fn hand_over(id: &Identity, dir: &Path) -> Result<(), PrivilegeError> {
    let fail = |path: &Path, error| PrivilegeError::Directory {
        path: path.to_path_buf(),
        error,
    };
    chown(id, dir).map_err(|e| fail(dir, e))?;
    for entry in fs::read_dir(dir).map_err(|e| fail(dir, e))? {
        let path = entry.map_err(|e| fail(dir, e))?.path();
        chown(id, &path).map_err(|e| fail(&path, e))?;
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            for inner in fs::read_dir(&path).map_err(|e| fail(&path, e))? {
                let inner = inner.map_err(|e| fail(&path, e))?.path();
                chown(id, &inner).map_err(|e| fail(&inner, e))?;
            }
        }
    }
    Ok(())
}

/// Never follows a symbolic link: a link planted in a directory must not
/// hand some other file to the session user.
fn chown(id: &Identity, path: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(id.uid.as_raw()), Some(id.gid.as_raw()))
}

/// Becomes `id` for good: no supplementary groups, no capabilities (also
/// none in the bounding set), no way back, no new privileges through exec.
pub fn switch_to(id: &Identity) -> Result<(), PrivilegeError> {
    let step = |step: &'static str| {
        move |e: nix::Error| PrivilegeError::Switch {
            step,
            error: e.to_string(),
        }
    };
    // Emptying the bounding set needs CAP_SETPCAP, which a root in some
    // containers lacks; the switch below still leaves no capability.
    if let Err(e) = caps::clear(None, CapSet::Bounding) {
        log::debug!("capability bounding set kept: {e}");
    }
    for set in [CapSet::Inheritable, CapSet::Ambient] {
        caps::clear(None, set).map_err(|e| PrivilegeError::Switch {
            step: "clearing capabilities",
            error: e.to_string(),
        })?;
    }
    nix::unistd::setgroups(&[]).map_err(step("setgroups"))?;
    nix::unistd::setresgid(id.gid, id.gid, id.gid).map_err(step("setresgid"))?;
    nix::unistd::setresuid(id.uid, id.uid, id.uid).map_err(step("setresuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(step("no_new_privs"))?;

    if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::setgid(Gid::from_raw(0)).is_ok()
    {
        return Err(PrivilegeError::StillPrivileged);
    }
    let uids = nix::unistd::getresuid().map_err(step("getresuid"))?;
    let gids = nix::unistd::getresgid().map_err(step("getresgid"))?;
    let groups = nix::unistd::getgroups().map_err(step("getgroups"))?;
    let caps_left = [CapSet::Effective, CapSet::Permitted]
        .iter()
        .any(|&set| caps::read(None, set).map_or(true, |c| !c.is_empty()));
    if [uids.real, uids.effective, uids.saved] != [id.uid; 3]
        || [gids.real, gids.effective, gids.saved] != [id.gid; 3]
        || groups.iter().any(|&g| g != id.gid)
        || caps_left
    {
        return Err(PrivilegeError::StillPrivileged);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_user_is_refused_with_what_to_do() {
        let e = resolve("no-such-user-pop3server-test", None).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PrivilegeError::NoSuchUser(_)));
        assert!(text.contains("no such user"), "{text}");
        assert!(text.contains("useradd"), "{text}");
    }

    #[test]
    fn root_is_never_the_session_user() {
        let e = resolve("root", None).unwrap_err();
        assert!(matches!(e, PrivilegeError::IsRoot(_)), "{e}");
        assert!(e.to_string().contains("never run as root"));
    }

    #[test]
    fn root_group_is_refused_too() {
        // "nobody" exists on every Debian and RPM system.
        let e = resolve("nobody", Some("root")).unwrap_err();
        assert!(matches!(e, PrivilegeError::IsRoot(_)), "{e}");
    }

    #[test]
    fn an_unknown_group_is_refused() {
        let e = resolve("nobody", Some("no-such-group-pop3server-test")).unwrap_err();
        assert!(matches!(e, PrivilegeError::NoSuchGroup(_)), "{e}");
    }
}
