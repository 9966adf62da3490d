//! The lock-owner file of a sled store: sled lets one process at a time
//! open a database, so whoever opens it writes `tokencache-owner` beside it
//! (its pid and its command). A process that finds the store locked reads
//! that file: a running `tokencache serve` holds the store for as long as it
//! runs, so `get`, `inspect` and `purge` say so at once, naming its pid,
//! instead of waiting for it; another one-shot command is waited for, as
//! before.

use std::io::Write as _;
use std::path::Path;

/// The file's name, in the store directory.
pub const FILE: &str = "tokencache-owner";

/// Who holds a store, as its owner file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Owner {
    pub(crate) pid: u32,
    /// The tokencache command (`serve`, `get`, ...), or `?`.
    pub(crate) command: String,
}

impl Owner {
    /// Whether the owner is a long-running `tokencache serve`.
    pub(crate) fn is_serve(&self) -> bool {
        self.command == "serve"
    }
}

/// Records this process as the holder of the store in `dir`. Failing only
/// costs other processes the owner's name in their message, so it is
/// logged, not reported.
pub(crate) fn write(dir: &Path) {
    let command = std::env::args()
        .nth(1)
        .filter(|c| {
            c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        })
        .unwrap_or_else(|| "?".to_owned());
    let text = format!("pid={}\ncommand={command}\n", std::process::id());
    let tmp = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, dir.join(FILE)));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!(dir = %dir.display(), error = %e, "cannot write the store's owner file");
    }
}

/// The pid of a running `tokencache serve` that holds the sled store in
/// `dir`, as its owner file says (`purge --force` must not delete a store
/// in use).
pub fn held_by_serve(dir: &Path) -> Option<u32> {
    read(dir).filter(Owner::is_serve).map(|o| o.pid)
}

/// The living process the owner file of `dir` names, other than this one.
pub(crate) fn read(dir: &Path) -> Option<Owner> {
    let text = std::fs::read_to_string(dir.join(FILE)).ok()?;
    let mut pid = None;
    let mut command = "?".to_owned();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("pid", v)) => pid = v.trim().parse::<u32>().ok(),
            Some(("command", v)) => command = v.trim().to_owned(),
            _ => {}
        }
    }
    let pid = pid?;
    let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
    alive.then_some(Owner { pid, command })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_file_names_a_living_process_or_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(dir.path()), None, "no file");
        // This process: not another holder.
        write(dir.path());
        assert_eq!(read(dir.path()), None);
        // A living process (pid 1) that is serve.
        std::fs::write(dir.path().join(FILE), "pid=1\ncommand=serve\n").expect("write");
        let owner = read(dir.path()).expect("pid 1 lives");
        assert!(owner.is_serve() && owner.pid == 1);
        // A pid that cannot exist.
        std::fs::write(dir.path().join(FILE), "pid=4294967295\ncommand=serve\n").expect("write");
        assert_eq!(read(dir.path()), None);
        std::fs::write(dir.path().join(FILE), "garbage").expect("write");
        assert_eq!(read(dir.path()), None);
    }
}
