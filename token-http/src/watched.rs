//! Files that hold secrets and are re-read when they change, so a secret,
//! key or certificate rotated on disk is used without a restart.
//!
//! # Detecting a change
//!
//! Each fetch compares a `stat` of every file (length, modification time,
//! and on Unix the inode, device and change time) with the one taken when
//! the file was last read. A `stat` is one system call and reads nothing,
//! so it is cheap on every fetch; the change time catches a rewrite that
//! keeps the length and restores the modification time (`cp -p`,
//! `rsync -t` onto the same inode), and the inode catches the
//! write-then-rename and symlink swaps of Kubernetes secret volumes. Only
//! when the `stat` differs is the file read again, and the new contents
//! replace the old only if their SHA-256 digest differs and they parse.
//!
//! A `stat` can miss a change (a network file system's attribute cache, or
//! a file rewritten during the request). So when the token endpoint
//! refuses the client, [`WatchedFiles::reread`] reads the files whatever
//! their `stat` says and compares digests: the credential retries once only
//! when the contents really changed.
//!
//! Both the `stat` and the read run on tokio's blocking pool: a fetch is
//! followed by a network round trip anyway, and a hung network mount then
//! never stalls a runtime thread.
//!
//! # Bad contents
//!
//! A file that is missing, unreadable, empty or invalid after a change
//! (half written during a rotation) keeps the last good contents in use,
//! with a `tracing` warning that names the file and what is wrong with it,
//! never its contents; it is tried again at the next fetch.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use ring::digest::{Context, SHA256};
use zeroize::Zeroizing;

/// A secret, key or certificate file larger than this is refused: a client
/// secret, a PEM key or a certificate chain is a few KiB, so a bigger file
/// is the wrong file.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// What a `stat` says about a file, to notice that it changed without
/// reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: (u64, u64),
    #[cfg(unix)]
    changed: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Turns the contents of the files (in the order of the paths) into the
/// value in use, or says what is wrong without quoting them.
pub(crate) type Parse<T> = Arc<dyn Fn(&[&[u8]]) -> Result<T, String> + Send + Sync>;

struct Loaded<T> {
    value: Arc<T>,
    /// Counts the contents put in use: a fetch remembers the generation it
    /// sent, so a re-read after a refusal knows whether what is in use now
    /// differs from what was sent (even when another fetch loaded it).
    generation: u64,
    /// The files' stamps when they were read (taken before reading, so a
    /// change during the read shows at the next check).
    stamps: Vec<Option<Stamp>>,
    digest: [u8; 32],
}

/// How a re-read ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reread {
    /// The contents in use are still those of the generation asked about.
    Unchanged,
    /// Other valid contents than those of the generation asked about are
    /// now in use.
    Changed,
    /// The files could not be read or parsed: the last good contents stay.
    Failed,
}

/// One or more files read and parsed together into a `T` (a key and its
/// certificate must match, so they are replaced as a pair), re-read when
/// they change.
pub(crate) struct WatchedFiles<T> {
    /// What the files are, for messages ("client secret file").
    what: &'static str,
    paths: Vec<PathBuf>,
    parse: Parse<T>,
    loaded: ArcSwap<Loaded<T>>,
}

impl<T: Send + Sync + 'static> WatchedFiles<T> {
    /// Reads and parses the files now (at build time, blocking: the files
    /// are small). The error names the file and the problem.
    pub(crate) fn load(
        what: &'static str,
        paths: Vec<PathBuf>,
        parse: Parse<T>,
    ) -> Result<Self, String> {
        let (stamps, contents) = read_all(&paths).map_err(|e| format!("the {what}: {e}"))?;
        let value = parse(&borrow(&contents))
            .map_err(|e| format!("the {what} {} could not be used: {e}", shown(&paths)))?;
        Ok(Self {
            what,
            loaded: ArcSwap::from_pointee(Loaded {
                value: Arc::new(value),
                generation: 0,
                stamps,
                digest: digest_of(&contents),
            }),
            paths,
            parse,
        })
    }

    /// The paths, in order.
    pub(crate) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The value in use, without looking at the files.
    #[cfg(test)]
    pub(crate) fn loaded(&self) -> Arc<T> {
        self.snapshot().0
    }

    /// The value in use and its generation, without looking at the files.
    pub(crate) fn snapshot(&self) -> (Arc<T>, u64) {
        let loaded = self.loaded.load();
        (loaded.value.clone(), loaded.generation)
    }

    /// The value to use for a fetch: re-read first if a file's `stat`
    /// changed since it was read.
    #[cfg(test)]
    pub(crate) async fn current(&self) -> Arc<T> {
        self.current_snapshot().await.0
    }

    /// [`current`](Self::current) with its generation.
    pub(crate) async fn current_snapshot(&self) -> (Arc<T>, u64) {
        let loaded = self.loaded.load_full();
        let paths = self.paths.clone();
        let stamps = tokio::task::spawn_blocking(move || stamps_of(&paths)).await;
        match stamps {
            Ok(stamps) if stamps == loaded.stamps => {}
            _ => {
                self.reread_since(loaded.generation).await;
            }
        }
        self.snapshot()
    }

    /// Reads the files whatever their `stat` says, against the contents
    /// in use now.
    #[cfg(test)]
    pub(crate) async fn reread(&self) -> Reread {
        let generation = self.snapshot().1;
        self.reread_since(generation).await
    }

    /// Reads the files whatever their `stat` says; new contents replace the
    /// old only when they differ (SHA-256) and parse. Says whether the
    /// contents in use are now other than those of generation `used`.
    pub(crate) async fn reread_since(&self, used: u64) -> Reread {
        let before = self.loaded.load_full();
        let paths = self.paths.clone();
        let parse = self.parse.clone();
        let in_use = before.digest;
        let read = tokio::task::spawn_blocking(move || {
            let (stamps, contents) = read_all(&paths)?;
            let digest = digest_of(&contents);
            if digest == in_use {
                return Ok((stamps, digest, None));
            }
            let value = parse(&borrow(&contents))?;
            Ok::<_, String>((stamps, digest, Some(value)))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the read was interrupted: {e}")));
        let failed = match read {
            Ok((stamps, digest, value)) => {
                let new = value.is_some();
                let next = Loaded {
                    generation: before.generation + u64::from(new),
                    value: value.map_or_else(|| before.value.clone(), Arc::new),
                    stamps,
                    digest,
                };
                // Another fetch may have stored newer contents meanwhile:
                // then theirs stay.
                let previous = self.loaded.compare_and_swap(&before, Arc::new(next));
                if new && Arc::ptr_eq(&previous, &before) {
                    tracing::info!(
                        files = %shown(&self.paths),
                        "the {} changed; its new contents are in use",
                        self.what
                    );
                }
                false
            }
            Err(reason) => {
                tracing::warn!(
                    files = %shown(&self.paths),
                    "the {} could not be re-read ({reason}); the last good contents stay in use",
                    self.what
                );
                true
            }
        };
        if self.loaded.load().generation != used {
            Reread::Changed
        } else if failed {
            Reread::Failed
        } else {
            Reread::Unchanged
        }
    }
}

impl<T> fmt::Debug for WatchedFiles<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchedFiles")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

fn shown(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" and ")
}

fn borrow(contents: &[Zeroizing<Vec<u8>>]) -> Vec<&[u8]> {
    contents.iter().map(|c| c.as_slice()).collect()
}

fn stamps_of(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| Stamp::of(&m)))
        .collect()
}

fn digest_of(contents: &[Zeroizing<Vec<u8>>]) -> [u8; 32] {
    let mut context = Context::new(&SHA256);
    for c in contents {
        context.update(&(c.len() as u64).to_be_bytes());
        context.update(c);
    }
    let mut out = [0; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

type Contents = (Vec<Option<Stamp>>, Vec<Zeroizing<Vec<u8>>>);

fn read_all(paths: &[PathBuf]) -> Result<Contents, String> {
    let mut stamps = Vec::with_capacity(paths.len());
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        let (stamp, bytes) = read_one(path)?;
        stamps.push(Some(stamp));
        contents.push(bytes);
    }
    Ok((stamps, contents))
}

/// One file's stamp (of the open file, before reading it) and contents.
fn read_one(path: &Path) -> Result<(Stamp, Zeroizing<Vec<u8>>), String> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("could not open {shown}: {e}"))?;
    let stamp = file
        .metadata()
        .map(|m| Stamp::of(&m))
        .map_err(|e| format!("could not stat {shown}: {e}"))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("could not read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{shown} is larger than {MAX_SECRET_FILE_BYTES} bytes"
        ));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("{shown} is empty"));
    }
    Ok((stamp, bytes))
}

/// A client secret from a file's contents: UTF-8, trimmed of surrounding
/// whitespace (a trailing newline), one line.
pub(crate) fn parse_secret(contents: &[&[u8]]) -> Result<token_core::Secret, String> {
    let bytes = contents.first().copied().unwrap_or_default();
    let text = std::str::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_owned())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("it is empty".into());
    }
    if text.contains(['\n', '\r']) {
        return Err("it holds more than one line; it should hold one secret".into());
    }
    Ok(token_core::Secret::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("token-http-watched-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn secret_file(path: &Path) -> WatchedFiles<token_core::Secret> {
        WatchedFiles::load(
            "client secret file",
            vec![path.to_owned()],
            Arc::new(parse_secret),
        )
        .unwrap()
    }

    /// Rewrites the file in place, same length, and puts its modification
    /// time back: only the change time (and the contents) differ.
    fn rewrite_keeping_mtime(path: &Path, contents: &str) {
        let before = std::fs::metadata(path).unwrap();
        // File times come from a coarse clock (one tick is a few ms): wait
        // until a new change time is visible, so the rewrite gets one.
        let probe = path.with_extension("probe");
        loop {
            std::fs::write(&probe, "").unwrap();
            if Stamp::of(&std::fs::metadata(&probe).unwrap()).changed > Stamp::of(&before).changed {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(before.len(), contents.len() as u64);
        let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file.set_modified(before.modified().unwrap()).unwrap();
    }

    #[tokio::test]
    async fn an_unchanged_file_is_not_read_again() {
        let path = temp_file("unchanged", "first-secret\n");
        let watched = secret_file(&path);
        let first = watched.current().await;
        let second = watched.current().await;
        assert!(Arc::ptr_eq(&first, &second), "the value was replaced");
        assert_eq!(second.expose(), "first-secret");
    }

    #[tokio::test]
    async fn a_changed_file_is_read_at_the_next_use() {
        let path = temp_file("changed", "first-secret\n");
        let watched = secret_file(&path);
        std::fs::write(&path, "second-secret-longer\n").unwrap();
        assert_eq!(watched.current().await.expose(), "second-secret-longer");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_same_length_rewrite_with_its_mtime_restored_is_still_noticed() {
        let path = temp_file("same-length", "secret-aaaa\n");
        let watched = secret_file(&path);
        rewrite_keeping_mtime(&path, "secret-bbbb\n");
        assert_eq!(watched.current().await.expose(), "secret-bbbb");
    }

    #[tokio::test]
    async fn a_file_replaced_by_rename_is_noticed() {
        let path = temp_file("rename", "secret-one\n");
        let watched = secret_file(&path);
        let next = path.with_extension("tmp");
        std::fs::write(&next, "secret-two\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(watched.current().await.expose(), "secret-two");
    }

    #[tokio::test]
    async fn empty_missing_or_invalid_files_keep_the_last_good_contents() {
        let path = temp_file("bad", "good-secret\n");
        let watched = secret_file(&path);
        for bad in ["", " \n", "half\nwritten\n"] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(watched.current().await.expose(), "good-secret", "{bad:?}");
            assert_eq!(watched.reread().await, Reread::Failed);
        }
        std::fs::remove_file(&path).unwrap();
        assert_eq!(watched.current().await.expose(), "good-secret");
        std::fs::write(&path, "next-secret\n").unwrap();
        assert_eq!(watched.current().await.expose(), "next-secret");
    }

    #[tokio::test]
    async fn reread_reports_a_change_only_when_the_contents_differ() {
        let path = temp_file("reread", "secret-1\n");
        let watched = secret_file(&path);
        assert_eq!(watched.reread().await, Reread::Unchanged);
        // Touched, same contents: not a change.
        std::fs::write(&path, "secret-1\n").unwrap();
        assert_eq!(watched.reread().await, Reread::Unchanged);
        std::fs::write(&path, "secret-2\n").unwrap();
        assert_eq!(watched.reread().await, Reread::Changed);
        assert_eq!(watched.loaded().expose(), "secret-2");
        assert_eq!(watched.reread().await, Reread::Unchanged);
    }

    #[tokio::test]
    async fn contents_loaded_by_another_fetch_count_as_changed_for_the_one_that_sent_the_old() {
        let path = temp_file("generation", "secret-1\n");
        let watched = secret_file(&path);
        let (_, sent) = watched.snapshot();
        std::fs::write(&path, "secret-22\n").unwrap();
        // Another fetch notices first and loads the new secret.
        assert_eq!(watched.current().await.expose(), "secret-22");
        // The refused fetch that sent the old one still retries.
        assert_eq!(watched.reread_since(sent).await, Reread::Changed);
        let (_, now) = watched.snapshot();
        assert_eq!(watched.reread_since(now).await, Reread::Unchanged);
    }

    #[test]
    fn load_errors_name_the_file_and_never_quote_it() {
        let path = temp_file("load", "two\nlines-secret-xyz\n");
        let e = WatchedFiles::load(
            "client secret file",
            vec![path.clone()],
            Arc::new(parse_secret),
        )
        .unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(!e.contains("lines-secret-xyz"), "{e}");
        let missing = path.with_extension("missing");
        let e = WatchedFiles::load(
            "client secret file",
            vec![missing.clone()],
            Arc::new(parse_secret),
        )
        .unwrap_err();
        assert!(e.contains(&missing.display().to_string()), "{e}");
        std::fs::write(&path, "\n").unwrap();
        let e = WatchedFiles::load(
            "client secret file",
            vec![path.clone()],
            Arc::new(parse_secret),
        )
        .unwrap_err();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn a_file_too_large_to_be_a_secret_is_refused() {
        let path = temp_file("large", &"a".repeat(MAX_SECRET_FILE_BYTES as usize + 1));
        let e = WatchedFiles::load("client secret file", vec![path], Arc::new(parse_secret))
            .unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }
}
