//! Where tokencache keeps things by default (XDG base directories).

use std::path::PathBuf;

use crate::error::Error;

/// `$XDG_CACHE_HOME/tokencache`, else `~/.cache/tokencache`: the default
/// sled store.
pub fn cache_dir() -> Result<PathBuf, Error> {
    base("XDG_CACHE_HOME", ".cache").map(|p| p.join("tokencache"))
}

/// `$XDG_CONFIG_HOME/tokencache`, else `~/.config/tokencache`: the profile
/// file and the key file.
pub fn config_dir() -> Result<PathBuf, Error> {
    base("XDG_CONFIG_HOME", ".config").map(|p| p.join("tokencache"))
}

fn base(var: &str, under_home: &str) -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(var).map(PathBuf::from) {
        // The XDG spec says relative values are to be ignored.
        if dir.is_absolute() {
            return Ok(dir);
        }
    }
    match std::env::var_os("HOME").map(PathBuf::from) {
        Some(home) if home.is_absolute() => Ok(home.join(under_home)),
        _ => Err(Error::config(format!(
            "cannot find a home directory: neither {var} nor HOME is set to an absolute path"
        ))),
    }
}
