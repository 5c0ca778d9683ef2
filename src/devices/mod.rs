//! Devices with a password of their own in front of an IMAP server that
//! takes only OAuth2 tokens: the device accounts ([`accounts`]), the
//! penalty for failed logins by client address ([`penalty`]), and the
//! token sources that log the devices in to IMAP ([`oauth`]). The admin
//! commands that set them up (`--hash-password`, `--oauth-consent`) are
//! the top of the house's (`admin`), since they take the whole
//! configuration.

pub mod accounts;
pub mod oauth;
pub mod penalty;

pub use accounts::{Device, Devices, hash_password};
