//! The command line over the file over the defaults, each value with the
//! place it came from, so that a value found wrong later (a combination,
//! a range) is blamed where it was written: `command line: --x: ...` or
//! `FILE:LINE: x: ...`.

use std::path::PathBuf;

use serde::de::DeserializeOwned;

use super::ConfigError;
use super::file::FileLayer;
use super::flags::Flags;
use super::settings::{self, Kind};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The flag as typed: `--idle-timeout`, `-b`.
    Flag(String),
    /// `FILE:LINE` (or `FILE` where the line cannot be told) and the key.
    File {
        at: String,
        key: String,
    },
    Default,
}

impl Origin {
    /// The error `reason` about a value from here.
    pub fn error(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        match self {
            Origin::Flag(flag) => ConfigError::new("command line", flag, reason),
            Origin::File { at, key } => ConfigError::new(at.clone(), key, reason),
            Origin::Default => ConfigError::new("built-in defaults", key, reason),
        }
    }

    pub fn is_flag(&self) -> bool {
        matches!(self, Origin::Flag(_))
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    pub fn fail(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        self.origin.error(key, reason)
    }
}

pub struct Layers {
    pub flags: Flags,
    pub file: FileLayer,
}

impl Layers {
    /// The value of setting `key`: the flag's if given, else the file's.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Sourced<T>>, ConfigError> {
        let setting = settings::find(key)
            .ok_or_else(|| ConfigError::new("pop3server", key, "no such setting (a bug)"))?;
        debug_assert!(
            setting.kind != Kind::Path,
            "{key}: read paths with Layers::path"
        );
        if let Some(value) = self.flags.value(setting) {
            let flag = setting.flag_name().unwrap_or_else(|| key.to_string());
            return T::deserialize(value)
                .map(|value| {
                    Some(Sourced {
                        value,
                        origin: Origin::Flag(flag.clone()),
                    })
                })
                .map_err(|e| ConfigError::new("command line", &flag, e.message()));
        }
        let value = self.file.get::<T>(key)?;
        Ok(value.map(|value| Sourced {
            value,
            origin: self.file_origin(key),
        }))
    }

    /// A path setting: a flag's path as given (a path need not be UTF-8,
    /// and `get` goes through text), else the file's.
    pub fn path(&self, key: &str) -> Result<Option<Sourced<PathBuf>>, ConfigError> {
        let setting = settings::find(key)
            .ok_or_else(|| ConfigError::new("pop3server", key, "no such setting (a bug)"))?;
        if let (true, Some(path)) = (setting.flag, self.flags.path(key)) {
            let flag = setting.flag_name().unwrap_or_else(|| key.to_string());
            return Ok(Some(Sourced {
                value: path,
                origin: Origin::Flag(flag),
            }));
        }
        let value = self.file.get::<PathBuf>(key)?;
        Ok(value.map(|value| Sourced {
            value,
            origin: self.file_origin(key),
        }))
    }

    /// `get`, or `default` (from the built-in defaults) when unset.
    pub fn get_or<T: DeserializeOwned>(
        &self,
        key: &str,
        default: T,
    ) -> Result<Sourced<T>, ConfigError> {
        Ok(self.get(key)?.unwrap_or(Sourced {
            value: default,
            origin: Origin::Default,
        }))
    }

    /// Only the value, where no later check can find it wrong.
    pub fn value_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.get_or(key, default)?.value)
    }

    /// Where `key` was set, if it was: by its flag, or in the file.
    pub fn set_by(&self, key: &str) -> Option<Origin> {
        let setting = settings::find(key)?;
        if setting.flag && self.flags.given(setting.key) {
            return setting.flag_name().map(Origin::Flag);
        }
        self.file.has(key).then(|| self.file_origin(key))
    }

    /// Where the file sets `key` (a dotted path for tables).
    pub fn file_origin(&self, key: &str) -> Origin {
        Origin::File {
            at: self.file.at(key),
            key: key.to_string(),
        }
    }

    pub fn flag(&self, name: &str) -> Origin {
        Origin::Flag(name.to_string())
    }
}
