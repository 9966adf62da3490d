//! `cargo xtask tidy`: checks on the source tree that no compiler makes.
//!
//! - The README's Rust version is the workspace `rust-version`.
//! - Every conformance check (a `pub async fn` in a theme file of
//!   token-conformance) is in its theme's `theme_checks!` list, and every
//!   theme is in the harness's list of themes.
//! - token-core depends on no backend (the architecture invariant).
//! - `deploy/Dockerfile` builds a workspace package's binary with a Rust at
//!   least the workspace's, and runs what it built (`dockerfile.rs`).
//! - The docs use plain words ("quick start"), not internal jargon.
//!
//! Each check is a function of file contents, so a unit test can hand it a
//! bad input and see it fail with a sentence that names what is wrong.

use std::fs;
use std::path::Path;

use crate::dockerfile::Member;
use crate::util::{project_root, Result};

/// The container image's build, checked against the workspace.
const DOCKERFILE: &str = "deploy/Dockerfile";

/// Crates token-core must never depend on: the workspace's backends, the
/// crates built on top of it, and the drivers behind them.
const BACKENDS: &[&str] = &[
    "token-memory",
    "token-redis",
    "token-sled",
    "token-http",
    "token-cache",
    "token-cli",
    "token-conformance",
    "token-serve",
    "moka",
    "redis",
    "sled",
    "reqwest",
    "hyper",
];

/// Words the docs must not use, with what to say instead.
const JARGON: &[(&str, &str)] = &[
    (
        "main job",
        "say what it does, e.g. \"quick start\" or \"the demo\"",
    ),
    ("main-job", "say what it does, e.g. \"the demo\""),
];

/// The docs [`JARGON`] is checked in, relative to the root, besides every
/// crate's README.md.
const DOCS: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "docs/BENCHMARKS.md",
    "docs/DEPLOY.md",
];

pub(crate) fn run() -> Result {
    let root = project_root();
    let mut problems = Vec::new();

    let cargo_toml = read(&root, "Cargo.toml")?;
    let readme = read(&root, "README.md")?;
    problems.extend(rust_version_matches(&cargo_toml, &readme).err());

    let conformance = root.join("token-conformance/src");
    let harness = read(&root, "token-conformance/src/harness.rs")?;
    let mut themes = Vec::new();
    for entry in fs::read_dir(&conformance)
        .map_err(|e| format!("cannot list {}: {e}", conformance.display()))?
    {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", conformance.display()))?
            .path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if path.extension().is_some_and(|e| e == "rs") && stem != "harness" {
            let text = fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            themes.push((stem.to_owned(), text));
        }
    }
    themes.sort();
    problems.extend(conformance_checks_registered(&themes, &harness));

    let core = read(&root, "token-core/Cargo.toml")?;
    problems.extend(core_depends_on_no_backend(&core).err());

    problems.extend(dockerfile_matches_workspace(&root, &cargo_toml)?);

    let mut docs: Vec<String> = DOCS.iter().map(|d| d.to_string()).collect();
    let mut crates: Vec<String> = fs::read_dir(&root)
        .map_err(|e| format!("cannot list {}: {e}", root.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file() && p.join("README.md").is_file())
        .filter_map(|p| p.file_name()?.to_str().map(|n| format!("{n}/README.md")))
        .collect();
    crates.sort();
    docs.extend(crates);
    for doc in &docs {
        if root.join(doc).is_file() {
            problems.extend(no_jargon(doc, &read(&root, doc)?));
        }
    }

    if problems.is_empty() {
        println!(
            "tidy: rust-version, {} conformance themes, token-core's dependencies, {DOCKERFILE}, {} docs: all good",
            themes.iter().filter(|(_, t)| theme_list(t).is_some()).count(),
            docs.len()
        );
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        Err(format!("tidy found {} problem(s), listed above", problems.len()).into())
    }
}

/// `deploy/Dockerfile` builds a package and binary of the workspace, with
/// a Rust at least the workspace's, and runs the binary it built
/// (`crate::dockerfile`).
fn dockerfile_matches_workspace(root: &Path, cargo_toml: &str) -> Result<Vec<String>> {
    let dockerfile = read(root, DOCKERFILE)?;
    let Some(rust_version) = table_value(cargo_toml, "workspace.package", "rust-version") else {
        // rust_version_matches already names this.
        return Ok(Vec::new());
    };
    let mut members = Vec::new();
    for entry in fs::read_dir(root).map_err(|e| format!("cannot list {}: {e}", root.display()))? {
        let dir = entry
            .map_err(|e| format!("cannot list {}: {e}", root.display()))?
            .path();
        if let Ok(manifest) = fs::read_to_string(dir.join("Cargo.toml")) {
            if dir != root {
                members.extend(Member::parse(&manifest, dir.join("src/main.rs").is_file()));
            }
        }
    }
    members.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(crate::dockerfile::check(
        DOCKERFILE,
        &dockerfile,
        &rust_version,
        &members,
    ))
}

fn read(root: &Path, relative: &str) -> Result<String> {
    fs::read_to_string(root.join(relative))
        .map_err(|e| format!("cannot read {relative}: {e}").into())
}

/// The README states the minimum Rust as "`<version>` or newer", and that
/// version is `[workspace.package] rust-version`.
fn rust_version_matches(cargo_toml: &str, readme: &str) -> std::result::Result<(), String> {
    let workspace = table_value(cargo_toml, "workspace.package", "rust-version").ok_or(
        "Cargo.toml has no `rust-version` in [workspace.package]; every crate inherits it from there",
    )?;
    let stated = readme_rust_version(readme).ok_or_else(|| {
        format!(
            "README.md does not say which Rust it needs: write \"{workspace} or newer\" where it names the toolchain"
        )
    })?;
    if stated == workspace {
        Ok(())
    } else {
        Err(format!(
            "README.md says Rust {stated} or newer, but the workspace rust-version in Cargo.toml is {workspace}: make them the same"
        ))
    }
}

/// The version in the README's first "`X.Y` or newer".
fn readme_rust_version(readme: &str) -> Option<String> {
    readme.match_indices(" or newer").find_map(|(at, _)| {
        let before = readme[..at].trim_end_matches(['`', ' ']);
        let start = before
            .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map_or(0, |i| i + 1);
        let version = &before[start..];
        let is_version = version.split('.').count() >= 2
            && version
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        is_version.then(|| version.to_owned())
    })
}

/// A `key = "value"` in `[table]` of a TOML text (the few shapes Cargo
/// manifests use; no TOML crate, so xtask stays std only).
fn table_value(toml: &str, table: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    for line in toml.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
        } else if current == table {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    None
}

/// Every `pub async fn` of a theme file is in the file's `theme_checks!`
/// list, the list names its own theme, and the harness lists the theme.
/// `themes` is `(file stem, contents)` of every file of
/// token-conformance/src except the harness.
fn conformance_checks_registered(themes: &[(String, String)], harness: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut found = 0;
    for (stem, text) in themes {
        let defined = public_async_fns(text);
        let Some((theme, listed)) = theme_list(text) else {
            if !defined.is_empty() {
                problems.push(format!(
                    "token-conformance/src/{stem}.rs defines checks ({}) but no `theme_checks!` list, so none of them runs: add one and put the theme in harness.rs's THEMES",
                    defined.join(", ")
                ));
            }
            continue;
        };
        found += 1;
        if theme != *stem {
            problems.push(format!(
                "token-conformance/src/{stem}.rs lists its checks under the theme `{theme}`: the theme must be the file's name, `{stem}`"
            ));
        }
        for name in defined.iter().filter(|n| !listed.contains(n)) {
            problems.push(format!(
                "the conformance check `{stem}::{name}` is not in the `theme_checks!` list of token-conformance/src/{stem}.rs, so no backend runs it: add it there"
            ));
        }
        if !harness.contains(&format!("crate::{stem}::CHECKS")) {
            problems.push(format!(
                "the conformance theme `{stem}` is not in THEMES in token-conformance/src/harness.rs, so none of its checks runs: add `crate::{stem}::CHECKS`"
            ));
        }
    }
    if found == 0 {
        problems.push(
            "no file of token-conformance/src has a `theme_checks!` list: the suite would run no check"
                .to_owned(),
        );
    }
    problems
}

/// Names of the top-level `pub async fn`s of a Rust file.
fn public_async_fns(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("pub async fn "))
        .filter_map(|rest| rest.split(['(', '<']).next())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// The theme and the names in a file's `theme_checks! { theme: a, b, }`.
fn theme_list(text: &str) -> Option<(String, Vec<String>)> {
    let start = text.find("theme_checks! {")? + "theme_checks! {".len();
    let body = &text[start..start + text[start..].find('}')?];
    let (theme, names) = body.split_once(':')?;
    let names = names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    Some((theme.trim().to_owned(), names))
}

/// token-core's manifest names no backend in any dependency table but
/// `[dev-dependencies]` (tests may use anything; users never get those).
fn core_depends_on_no_backend(manifest: &str) -> std::result::Result<(), String> {
    let mut table = String::new();
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = name.trim().to_owned();
            // `[dependencies.redis]` names the dependency in the header.
            if let Some((section, dep)) = table.rsplit_once('.') {
                if is_runtime_dependencies(section) && BACKENDS.contains(&dep) {
                    found.push(dep.to_owned());
                }
            }
            continue;
        }
        if !is_runtime_dependencies(&table) || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let name = key.trim().split('.').next().unwrap_or_default().trim();
        // `alias = { package = "redis", ... }` depends on redis.
        let package = value
            .split_once("package")
            .and_then(|(_, rest)| rest.split('"').nth(1))
            .unwrap_or(name);
        for dep in [name, package] {
            if BACKENDS.contains(&dep) && !found.iter().any(|f| f == dep) {
                found.push(dep.to_owned());
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "token-core/Cargo.toml depends on {}: token-core must depend on no backend (ARCHITECTURE.md); depend on token-core from the backend instead",
            found.join(", ")
        ))
    }
}

/// `dependencies`, `build-dependencies`, and their `target.<cfg>.` forms.
fn is_runtime_dependencies(table: &str) -> bool {
    let last = table.rsplit('.').next().unwrap_or(table);
    last == "dependencies" || last == "build-dependencies"
}

/// `doc` uses none of [`JARGON`].
fn no_jargon(doc: &str, text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut problems = Vec::new();
    for (word, instead) in JARGON {
        for (at, _) in lower.match_indices(word) {
            let line = lower[..at].matches('\n').count() + 1;
            problems.push(format!(
                "{doc}:{line} says \"{word}\", internal jargon a reader does not know: {instead}"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARGO: &str = "[workspace]\nmembers = []\n\n[workspace.package]\nversion = \"0.1.0\"\nrust-version = \"1.88\"\n";

    #[test]
    fn rust_version_passes_when_readme_and_workspace_agree() {
        let readme = "## Quick start\n\nYou need a Rust toolchain, 1.88 or newer.\n";
        assert_eq!(rust_version_matches(CARGO, readme), Ok(()));
        assert_eq!(rust_version_matches(CARGO, "Rust `1.88` or newer"), Ok(()));
    }

    #[test]
    fn rust_version_fails_when_readme_differs() {
        let err = rust_version_matches(CARGO, "You need Rust 1.85 or newer.").unwrap_err();
        assert_eq!(
            err,
            "README.md says Rust 1.85 or newer, but the workspace rust-version in Cargo.toml is 1.88: make them the same"
        );
    }

    #[test]
    fn rust_version_fails_when_readme_or_workspace_is_silent() {
        let err = rust_version_matches(CARGO, "Any Rust will do, or newer ideas.").unwrap_err();
        assert!(err.contains("README.md does not say which Rust"), "{err}");
        let err = rust_version_matches("[workspace]\n", "Rust 1.88 or newer").unwrap_err();
        assert!(err.contains("no `rust-version`"), "{err}");
    }

    fn theme(stem: &str, text: &str) -> (String, String) {
        (stem.to_owned(), text.to_owned())
    }

    const BASIC: &str = "use x;\n\ncrate::harness::theme_checks! {\n    basic:\n    a,\n    b,\n}\n\npub async fn a(fx: &Fixture) {}\npub async fn b(fx: &Fixture) {}\nasync fn helper() {}\n";
    const HARNESS: &str = "static THEMES: &[&[Check]] = &[\n    crate::basic::CHECKS,\n];\n";

    #[test]
    fn registered_checks_pass() {
        let themes = [
            theme("basic", BASIC),
            theme("support", "pub(crate) fn x() {}"),
        ];
        assert_eq!(
            conformance_checks_registered(&themes, HARNESS),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_check_missing_from_its_list_fails() {
        let text = format!("{BASIC}pub async fn c(fx: &Fixture) {{}}\n");
        let problems = conformance_checks_registered(&[theme("basic", &text)], HARNESS);
        assert_eq!(
            problems,
            ["the conformance check `basic::c` is not in the `theme_checks!` list of token-conformance/src/basic.rs, so no backend runs it: add it there"]
        );
    }

    #[test]
    fn a_theme_missing_from_the_harness_fails() {
        let lease = BASIC.replace("basic:", "lease:");
        let problems = conformance_checks_registered(
            &[theme("basic", BASIC), theme("lease", &lease)],
            HARNESS,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("`lease` is not in THEMES"),
            "{problems:?}"
        );
    }

    #[test]
    fn checks_without_a_list_or_under_the_wrong_theme_fail() {
        let problems = conformance_checks_registered(
            &[theme("expiry", "pub async fn gone(fx: &Fixture) {}\n")],
            HARNESS,
        );
        assert!(
            problems[0].contains("defines checks (gone) but no `theme_checks!` list"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("no file of token-conformance/src"),
            "{problems:?}"
        );

        let renamed = conformance_checks_registered(
            &[theme("basic", &BASIC.replace("basic:", "lease:"))],
            HARNESS,
        );
        assert_eq!(renamed.len(), 1, "{renamed:?}");
        assert!(
            renamed[0].contains("under the theme `lease`"),
            "{renamed:?}"
        );
    }

    const CORE: &str = "[package]\nname = \"token-core\"\n\n[features]\nencryption = [\"dep:aes-gcm\"]\n\n[dependencies]\naes-gcm = { workspace = true, optional = true }\ntokio.workspace = true\n\n[dev-dependencies]\ntoken-memory.workspace = true\n";

    #[test]
    fn core_without_backends_passes_and_dev_dependencies_do_not_count() {
        assert_eq!(core_depends_on_no_backend(CORE), Ok(()));
    }

    #[test]
    fn core_depending_on_a_backend_fails_in_every_spelling() {
        let direct = CORE.replace(
            "tokio.workspace = true",
            "tokio.workspace = true\nredis = \"1\"",
        );
        assert_eq!(
            core_depends_on_no_backend(&direct).unwrap_err(),
            "token-core/Cargo.toml depends on redis: token-core must depend on no backend (ARCHITECTURE.md); depend on token-core from the backend instead"
        );
        let renamed = CORE.replace(
            "tokio.workspace = true",
            "tokio.workspace = true\nkv = { package = \"sled\", version = \"0.34\" }",
        );
        assert!(core_depends_on_no_backend(&renamed)
            .unwrap_err()
            .contains("depends on sled"));
        let target = format!("{CORE}\n[target.'cfg(unix)'.dependencies]\ntoken-memory = {{ path = \"../token-memory\" }}\n");
        assert!(core_depends_on_no_backend(&target)
            .unwrap_err()
            .contains("depends on token-memory"));
        let table = format!("{CORE}\n[dependencies.moka]\nversion = \"0.12\"\n");
        assert!(core_depends_on_no_backend(&table)
            .unwrap_err()
            .contains("depends on moka"));
    }

    /// The real tree, so that `cargo xtask test` (what .ci/run runs)
    /// enforces the Dockerfile check too, not only `cargo xtask tidy`.
    #[test]
    fn the_projects_dockerfile_matches_the_workspace() {
        let root = project_root();
        let cargo_toml = read(&root, "Cargo.toml").unwrap();
        assert_eq!(
            dockerfile_matches_workspace(&root, &cargo_toml).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn jargon_in_a_doc_is_named_with_its_line() {
        assert!(no_jargon("README.md", "## Quick start\n\nRun the demo.\n").is_empty());
        let text = "# token-cache\n\nThe Main job: run it.\n\nmain job\n";
        let problems = no_jargon("README.md", text);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("README.md:3 says \"main job\""),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("README.md:5 says \"main job\""),
            "{problems:?}"
        );
    }
}
