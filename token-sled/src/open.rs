//! Opening the database directory: private permissions, the process lock,
//! the store-format marker, and quarantine of a damaged sled database.
//!
//! Layout of a store directory:
//!
//! ```text
//! <path>/                     0700
//!   token-sled.lock           held (flock) while a store has it open
//!   token-sled.format         "token-sled store format 1"
//!   sled/                     the sled database (trees "tokens" and "meta")
//!   sled.damaged-<unix ms>/   a quarantined database, if one was found
//! ```

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fs2::FileExt as _;

use crate::error::SledError;

/// The store format this build writes and reads.
pub const STORE_FORMAT: u32 = 1;

const LOCK_FILE: &str = "token-sled.lock";
const FORMAT_FILE: &str = "token-sled.format";
const FORMAT_PREFIX: &str = "token-sled store format ";
const SLED_DIR: &str = "sled";

/// A damaged database that was moved aside when the store opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    /// Where the damaged database was.
    pub from: PathBuf,
    /// Where it is now.
    pub to: PathBuf,
    /// What was wrong with it (sled's error, or that opening it panicked).
    pub reason: String,
}

impl fmt::Display for Quarantine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the token database {} was damaged ({}); it was moved to {} and an empty database \
             was started in its place (cached tokens will be fetched again)",
            self.from.display(),
            self.reason,
            self.to.display()
        )
    }
}

/// What [`open_dir`] found and holds.
pub(crate) struct Opened {
    pub(crate) db: sled::Db,
    pub(crate) lock: File,
    pub(crate) quarantine: Option<Quarantine>,
}

/// Creates (or tightens) the directory, takes the lock, checks the format
/// marker, and opens sled, quarantining a damaged database once.
pub(crate) fn open_dir(
    path: &Path,
    cache_capacity: u64,
    quarantine_damaged: bool,
) -> Result<Opened, SledError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| SledError::io("create the database directory", path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(|e| SledError::io("make private (0700) the database directory", path, e))?;

    let lock = take_lock(path)?;
    check_format(path)?;

    let sled_dir = path.join(SLED_DIR);
    let config = sled::Config::new()
        .path(&sled_dir)
        .cache_capacity(cache_capacity);
    let (db, quarantine) = match open_sled(&config) {
        Ok(db) => (db, None),
        Err(Damage::Io(e)) => return Err(SledError::sled("open the database", &sled_dir, e)),
        Err(Damage::Damaged(reason)) if quarantine_damaged => {
            let to = path.join(format!("{SLED_DIR}.damaged-{}", unix_ms()));
            fs::rename(&sled_dir, &to)
                .map_err(|e| SledError::io("move aside the damaged database", &sled_dir, e))?;
            let q = Quarantine {
                from: sled_dir.clone(),
                to,
                reason,
            };
            tracing::warn!(
                from = %q.from.display(),
                to = %q.to.display(),
                reason = %q.reason,
                "token-sled: {q}"
            );
            match open_sled(&config) {
                Ok(db) => (db, Some(q)),
                Err(Damage::Io(e)) => {
                    return Err(SledError::sled("open a new database", &sled_dir, e))
                }
                Err(Damage::Damaged(reason)) => {
                    return Err(SledError::io(
                        "open a new database",
                        &sled_dir,
                        std::io::Error::other(reason),
                    ))
                }
            }
        }
        Err(Damage::Damaged(reason)) => {
            return Err(SledError::io(
                "open the database",
                &sled_dir,
                std::io::Error::new(ErrorKind::InvalidData, reason),
            ))
        }
    };
    write_format(path)?;
    tighten_permissions(path);
    Ok(Opened {
        db,
        lock,
        quarantine,
    })
}

enum Damage {
    /// Not damage: the disk or the permissions. Reported, never quarantined.
    Io(sled::Error),
    /// The database is damaged: sled says so, or panicked reading it.
    Damaged(String),
}

fn open_sled(config: &sled::Config) -> Result<sled::Db, Damage> {
    // sled 0.34 can panic on some damaged files: contain it.
    match std::panic::catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(Damage::Damaged("sled panicked while reading it".into())),
    }
}

fn classify(e: sled::Error) -> Damage {
    match &e {
        // `Unsupported` is what sled 0.34 says when its files are garbage
        // (their header does not parse). For a cache, moving them aside and
        // starting empty costs one IdP call per key; refusing to start costs
        // every request.
        sled::Error::Corruption { .. }
        | sled::Error::ReportableBug(_)
        | sled::Error::Unsupported(_) => Damage::Damaged(e.to_string()),
        sled::Error::Io(io)
            if matches!(io.kind(), ErrorKind::InvalidData | ErrorKind::UnexpectedEof) =>
        {
            Damage::Damaged(e.to_string())
        }
        _ => Damage::Io(e),
    }
}

fn take_lock(dir: &Path) -> Result<File, SledError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SledError::io("open the lock file", &path, e))?;
    match file.try_lock_exclusive() {
        Ok(()) => Ok(file),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.raw_os_error() == Some(11) => {
            Err(SledError::Locked {
                path: dir.to_owned(),
            })
        }
        Err(e) => Err(SledError::io("lock", &path, e)),
    }
}

fn check_format(dir: &Path) -> Result<(), SledError> {
    let path = dir.join(FORMAT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SledError::io("read the format marker", &path, e)),
    };
    let found = text.trim();
    let version = found
        .strip_prefix(FORMAT_PREFIX)
        .and_then(|v| v.parse::<u32>().ok());
    match version {
        Some(v) if v <= STORE_FORMAT => Ok(()),
        _ => Err(SledError::FutureFormat {
            path: dir.to_owned(),
            found: found.chars().take(64).collect(),
            supported: STORE_FORMAT,
        }),
    }
}

fn write_format(dir: &Path) -> Result<(), SledError> {
    let path = dir.join(FORMAT_FILE);
    let want = format!("{FORMAT_PREFIX}{STORE_FORMAT}\n");
    if fs::read_to_string(&path).is_ok_and(|t| t == want) {
        return Ok(());
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SledError::io("write the format marker", &path, e))?;
    f.write_all(want.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| SledError::io("write the format marker", &path, e))
}

/// Makes every directory under `dir` 0700 and every file 0600. sled creates
/// its files with the process umask; the directory being 0700 already keeps
/// others out, this keeps the files private even if it is loosened.
/// Best effort: failures are logged, not returned.
pub(crate) fn tighten_permissions(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        let mode = if kind.is_dir() {
            tighten_permissions(&path);
            0o700
        } else if kind.is_file() {
            0o600
        } else {
            continue;
        };
        let loose = entry
            .metadata()
            .map(|m| m.permissions().mode() & 0o777 != mode)
            .unwrap_or(true);
        if loose {
            if let Err(e) = fs::set_permissions(&path, fs::Permissions::from_mode(mode)) {
                tracing::debug!(path = %path.display(), error = %e, "token-sled: cannot tighten permissions");
            }
        }
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
