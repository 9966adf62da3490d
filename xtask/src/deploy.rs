//! The tools token-cli's `tests/deploy.rs` and `tests/prometheus.rs` check
//! the files of `deploy/` with:
//!
//! - `kubernetes-validate` (PyPI, with the Kubernetes JSON schemas bundled,
//!   so it works offline), pinned in `deploy/requirements.txt`, installed
//!   into the virtualenv `target/deploy-venv`;
//! - `prometheus` and `promtool` from Debian's `prometheus` package, taken
//!   with `apt-get download` and unpacked with `dpkg-deb -x` into
//!   `target/prometheus` (installing the package would start a Prometheus
//!   daemon on 0.0.0.0:9090; the tests run their own on a loopback port).
//!
//! `systemd-analyze` (for the unit) is the system's own and is not
//! installed here; the test says how to get it.
//!
//! Idempotent: pip runs only when the requirements differ from the ones
//! last installed; the package is fetched only when its binaries are not
//! there yet. When a tool cannot be had the step warns (the tests then skip
//! loudly); under CI that is a failure naming the command that failed.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::{self, Result};

const REQUIREMENTS: &str = "deploy/requirements.txt";
/// Where the venv goes, relative to the project root (the tests look there).
const VENV: &str = "target/deploy-venv";
/// Copy of the requirements last installed, inside the venv.
const STAMP: &str = ".xtask-installed-requirements.txt";
/// Where the `prometheus` package is unpacked (`usr/bin/promtool` inside),
/// relative to the project root (the tests look there).
const PROMETHEUS: &str = "target/prometheus";
/// The Debian package the binaries come from.
const PACKAGE: &str = "prometheus";

pub(crate) fn prepare() -> Result {
    let venv = prepare_venv();
    let prometheus = prepare_prometheus();
    venv.and(prometheus)
}

/// A tool could not be installed: an error under CI, else a warning.
fn unavailable(why: String) -> Result {
    if util::is_ci() {
        return Err(why.into());
    }
    println!("warning: {why}; the tests that need it will be skipped");
    Ok(())
}

fn prepare_venv() -> Result {
    let root = util::project_root();
    let venv = root.join(VENV);
    let Some(python) = util::find_program("python3") else {
        return unavailable(
            "python3 not found: token-cli's deploy tests validate the Kubernetes manifests \
             with kubernetes-validate, which needs Python 3.9+ with venv \
             (e.g. `apt-get install python3 python3-venv`)"
                .to_owned(),
        );
    };
    let wanted =
        fs::read(root.join(REQUIREMENTS)).map_err(|e| format!("reading {REQUIREMENTS}: {e}"))?;
    if fs::read(venv.join(STAMP)).is_ok_and(|installed| installed == wanted) {
        println!("kubernetes-validate already installed in {VENV} (requirements unchanged)");
        return Ok(());
    }
    if !venv.join("bin/python").exists() {
        if let Err(e) = util::run(Command::new(python).args(["-m", "venv"]).arg(&venv)) {
            return unavailable(format!(
                "creating the Python venv {VENV} failed (is python3-venv installed?): {e}"
            ));
        }
    }
    if let Err(e) = util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(root.join(REQUIREMENTS)),
    ) {
        return unavailable(format!(
            "installing kubernetes-validate into {VENV} failed: {e}; by hand: \
             `python3 -m venv {VENV} && {VENV}/bin/pip install -r {REQUIREMENTS}`"
        ));
    }
    fs::write(venv.join(STAMP), wanted).map_err(|e| format!("writing {VENV}/{STAMP}: {e}"))?;
    Ok(())
}

fn prepare_prometheus() -> Result {
    let root = util::project_root();
    let dir = root.join(PROMETHEUS);
    let binaries = ["usr/bin/prometheus", "usr/bin/promtool"];
    if binaries.iter().all(|b| dir.join(b).is_file()) {
        println!("prometheus and promtool already unpacked in {PROMETHEUS}");
        return Ok(());
    }
    let by_hand = format!(
        "(cd target && apt-get download {PACKAGE} && dpkg-deb -x {PACKAGE}_*.deb prometheus); \
         run `apt-get update` first if apt cannot find the package. Do not `apt-get install \
         {PACKAGE}`: it starts a daemon on 0.0.0.0:9090"
    );
    let missing: Vec<&str> = ["apt-get", "dpkg-deb"]
        .into_iter()
        .filter(|p| util::find_program(p).is_none())
        .collect();
    if !missing.is_empty() {
        return unavailable(format!(
            "{} not found: the Prometheus rule and scrape tests take prometheus and promtool \
             from Debian's `{PACKAGE}` package; on Debian: {by_hand}",
            missing.join(" and ")
        ));
    }
    let download = root.join("target/prometheus-download");
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).map_err(|e| format!("creating {}: {e}", download.display()))?;
    let fetch = || util::run(&mut apt_get_download(&download));
    let fetched = fetch().or_else(|first| {
        // A fresh machine may have no package lists yet.
        if util::is_root() && util::run(Command::new("apt-get").args(["update", "-qq"])).is_ok() {
            fetch()
        } else {
            Err(first)
        }
    });
    if let Err(e) = fetched {
        return unavailable(format!(
            "downloading Debian's `{PACKAGE}` package failed: {e}; by hand: {by_hand}"
        ));
    }
    let deb = deb_file(&download)?;
    let unpack = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status();
    let _ = fs::remove_dir_all(&download);
    match unpack {
        Ok(s) if s.success() => {}
        Ok(s) => return unavailable(format!("`dpkg-deb -x` failed ({s}); by hand: {by_hand}")),
        Err(e) => return unavailable(format!("could not run dpkg-deb: {e}; by hand: {by_hand}")),
    }
    match binaries.iter().find(|b| !dir.join(b).is_file()) {
        Some(b) => unavailable(format!(
            "Debian's `{PACKAGE}` package has no {b}; the tests need prometheus and promtool"
        )),
        None => {
            println!("prometheus and promtool unpacked in {PROMETHEUS}");
            Ok(())
        }
    }
}

fn apt_get_download(into: &Path) -> Command {
    let mut cmd = Command::new("apt-get");
    // `apt-get download` writes into the current directory; as root it
    // warns that its sandbox user cannot write there, and goes on.
    cmd.args(["download", "-qq", PACKAGE]).current_dir(into);
    cmd
}

/// The one `.deb` `apt-get download` left in `dir`.
fn deb_file(dir: &Path) -> Result<std::path::PathBuf> {
    fs::read_dir(dir)
        .map_err(|e| format!("listing {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| format!("apt-get download left no .deb in {}", dir.display()).into())
}
