//! Where tokencache keeps things by default: a state directory when one is
//! given, else the XDG base directories.
//!
//! **State directory.** `--state-dir DIR` ([`set_state_dir`]) or
//! `TOKENCACHE_STATE_DIR` replaces the need for a writable HOME: the
//! default sled store (with its index, warm files and lock-owner file) is
//! `DIR/store` and the default key file `DIR/key`. The profile file is
//! configuration, not state: it stays `--config` / `TOKENCACHE_CONFIG` /
//! `$XDG_CONFIG_HOME/tokencache/config.toml`. Without a state directory:
//! `$XDG_CACHE_HOME/tokencache` (else `~/.cache/tokencache`) and
//! `$XDG_CONFIG_HOME/tokencache/key` (else `~/.config/...`), as before.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::Error;

/// The environment variable naming the state directory.
pub const STATE_DIR_ENV: &str = "TOKENCACHE_STATE_DIR";

static STATE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Sets this process's state directory (`--state-dir`), ahead of
/// `TOKENCACHE_STATE_DIR`. Only the first call counts; call it before
/// anything is opened.
pub fn set_state_dir(dir: PathBuf) {
    let _ = STATE_DIR.set(dir);
}

/// The state directory in force: [`set_state_dir`], else
/// `TOKENCACHE_STATE_DIR` (when not empty); a relative one is taken from
/// the current directory.
pub fn state_dir() -> Option<PathBuf> {
    let dir = STATE_DIR.get().cloned().or_else(|| {
        std::env::var_os(STATE_DIR_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })?;
    if dir.is_absolute() {
        Some(dir)
    } else {
        std::env::current_dir().ok().map(|cwd| cwd.join(dir))
    }
}

/// The default sled store: `<state dir>/store`, else
/// `$XDG_CACHE_HOME/tokencache`, else `~/.cache/tokencache`.
pub fn cache_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = state_dir() {
        return Ok(dir.join("store"));
    }
    base("XDG_CACHE_HOME", ".cache").map(|p| p.join("tokencache"))
}

/// The default key file's directory: the state directory, else the config
/// directory.
pub(crate) fn key_dir() -> Result<PathBuf, Error> {
    match state_dir() {
        Some(dir) => Ok(dir),
        None => config_dir(),
    }
}

/// `$XDG_CONFIG_HOME/tokencache`, else `~/.config/tokencache`: the profile
/// file (and the key file when there is no state directory).
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
            "cannot find a home directory: neither {var} nor HOME is set to an absolute path; \
             give tokencache a state directory with --state-dir DIR or {STATE_DIR_ENV}=DIR"
        ))),
    }
}
