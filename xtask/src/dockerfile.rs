//! The `cargo xtask tidy` check of `deploy/Dockerfile` against the
//! workspace: images cannot be built on the project's machines, so nothing
//! else would notice a Dockerfile that builds a package or binary that no
//! longer exists, copies a path the build does not produce, or uses a Rust
//! older than the workspace needs.
//!
//! - The builder stage is `FROM ...rust:<version>...`, and that version is
//!   at least `[workspace.package] rust-version`.
//! - Its `cargo build` builds `--release --locked` one package (`-p`) and
//!   one binary (`--bin`), and that package is a workspace member that
//!   defines that binary.
//! - The Dockerfile copies `target/release/<bin>` out of the build, and the
//!   runtime stage's `ENTRYPOINT` is the path it copied the binary to.
//! - The runtime stage runs as a user other than root.

use std::path::Path;

/// What `Cargo.toml` of one workspace member says: its package name and
/// the names of its binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) package: String,
    pub(crate) bins: Vec<String>,
}

impl Member {
    /// A member from its manifest; `has_main` is whether `src/main.rs`
    /// exists (Cargo's implicit binary, named after the package).
    pub(crate) fn parse(manifest: &str, has_main: bool) -> Option<Self> {
        let mut table = String::new();
        let mut package = None;
        let mut bins = Vec::new();
        for line in manifest.lines().map(str::trim) {
            if line.starts_with('[') {
                table = line.to_owned();
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if key.trim() != "name" {
                continue;
            }
            let value = value.trim().trim_matches('"').to_owned();
            match table.as_str() {
                "[package]" => package = Some(value),
                "[[bin]]" => bins.push(value),
                _ => {}
            }
        }
        let package = package?;
        if bins.is_empty() && has_main {
            bins.push(package.clone());
        }
        Some(Self { package, bins })
    }
}

/// Every problem of `dockerfile` (the text of `path`) against the
/// workspace's `rust_version` and `members`, one sentence each.
pub(crate) fn check(
    path: &str,
    dockerfile: &str,
    rust_version: &str,
    members: &[Member],
) -> Vec<String> {
    let mut problems = Vec::new();
    let lines = instructions(dockerfile);

    // The builder's Rust.
    let rust_from = lines.iter().find_map(|l| {
        let rest = l.strip_prefix("FROM ")?;
        let image = rest.split_whitespace().find(|w| !w.starts_with("--"))?;
        let (name, tag) = image.split_once(':')?;
        (name == "rust" || name.ends_with("/rust")).then(|| tag.to_owned())
    });
    match rust_from {
        None => problems.push(format!(
            "{path} has no builder stage `FROM rust:<version>...`: build with the official Rust image, at least the workspace rust-version {rust_version}"
        )),
        Some(tag) => {
            let version: String = tag
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            match (parse_version(&version), parse_version(rust_version)) {
                (Some(image), Some(needed)) if image >= needed => {}
                (Some(_), Some(_)) => problems.push(format!(
                    "{path} builds with rust:{tag}, older than the workspace rust-version {rust_version} in Cargo.toml: use rust:{rust_version} or newer"
                )),
                _ => problems.push(format!(
                    "{path} builds with rust:{tag}, a tag without a version: pin a Rust version, at least the workspace rust-version {rust_version}"
                )),
            }
        }
    }

    // The build command.
    let Some(build) = lines.iter().find_map(|l| {
        let at = l.find("cargo build")?;
        Some(l[at..].split("&&").next().unwrap_or_default().to_owned())
    }) else {
        problems.push(format!(
            "{path} runs no `cargo build`: it must build the tokencache binary with `cargo build --release --locked -p <package> --bin <bin>`"
        ));
        return problems;
    };
    let words: Vec<&str> = build.split_whitespace().collect();
    let value_of = |flags: &[&str]| {
        words.iter().enumerate().find_map(|(i, w)| {
            flags.iter().find_map(|f| {
                if w == f {
                    words.get(i + 1).map(|v| v.to_string())
                } else {
                    w.strip_prefix(&format!("{f}=")).map(str::to_owned)
                }
            })
        })
    };
    for flag in ["--release", "--locked"] {
        if !words.contains(&flag) {
            problems.push(format!(
                "{path}'s `{}` lacks {flag}: the image must be built {}",
                build.trim(),
                if flag == "--release" {
                    "optimized (--release)"
                } else {
                    "from the committed Cargo.lock (--locked)"
                }
            ));
        }
    }
    let package = value_of(&["-p", "--package"]);
    let bin = value_of(&["--bin"]);
    let (Some(package), Some(bin)) = (package, bin) else {
        problems.push(format!(
            "{path}'s `{}` must name the package (-p) and the binary (--bin) it builds",
            build.trim()
        ));
        return problems;
    };
    match members.iter().find(|m| m.package == package) {
        None => problems.push(format!(
            "{path} builds `-p {package}`, which is not a package of the workspace (packages: {})",
            members
                .iter()
                .map(|m| m.package.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Some(member) if !member.bins.contains(&bin) => {
            let owner = members.iter().find(|m| m.bins.contains(&bin));
            problems.push(match owner {
                Some(o) => format!(
                    "{path} builds `-p {package} --bin {bin}`, but the binary {bin} belongs to the package {}: use `-p {}`",
                    o.package, o.package
                ),
                None => format!(
                    "{path} builds `--bin {bin}`, but the package {package} has no such binary (its binaries: {})",
                    if member.bins.is_empty() { "none".to_owned() } else { member.bins.join(", ") }
                ),
            });
        }
        Some(_) => {}
    }

    // The binary's path out of the build and into the runtime image.
    let built = format!("target/release/{bin}");
    if !dockerfile.contains(&built) {
        problems.push(format!(
            "{path} builds the binary {bin} but never copies {built}, where cargo puts it"
        ));
    }
    let last_stage = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .unwrap_or(0);
    let entrypoint = lines[last_stage..]
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .and_then(|e| {
            // Exec form `["/path", "arg"]` or shell form `/path arg`.
            let e = e.trim();
            let first = match e.strip_prefix('[') {
                Some(list) => list.trim_end_matches(']').split(',').next(),
                None => e.split_whitespace().next(),
            };
            first.map(|f| f.trim().trim_matches('"').to_owned())
        });
    let user = lines[last_stage..]
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .map(|u| u.trim().split(':').next().unwrap_or_default().to_owned());
    match user.as_deref() {
        Some("0" | "root") => problems.push(format!(
            "{path}'s runtime stage runs as root (USER {}): run as a non-root user, e.g. USER 65532:65532",
            user.as_deref().unwrap_or_default()
        )),
        None if !lines[last_stage].contains(":nonroot") => problems.push(format!(
            "{path}'s runtime stage sets no USER, so it runs as root: add e.g. USER 65532:65532"
        )),
        _ => {}
    }
    match entrypoint {
        None => problems.push(format!(
            "{path}'s runtime stage has no ENTRYPOINT: it must run the {bin} binary"
        )),
        Some(entry) => {
            if Path::new(&entry).file_name().and_then(|n| n.to_str()) != Some(bin.as_str()) {
                problems.push(format!(
                    "{path}'s ENTRYPOINT runs {entry}, but the binary built is {bin}"
                ));
            }
            let copied = lines[last_stage..].iter().any(|l| {
                l.starts_with("COPY ")
                    && l.contains("--from=")
                    && l.split_whitespace().last() == Some(entry.as_str())
            });
            if !copied {
                problems.push(format!(
                    "{path}'s ENTRYPOINT runs {entry}, but the runtime stage copies nothing from the build to that path"
                ));
            }
        }
    }
    problems
}

/// The Dockerfile's instructions, one per entry: comments dropped,
/// continuation lines joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                out.push(current.trim().to_owned());
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// `1.88` or `1.88.1` as numbers, compared component by component
/// (a missing patch is 0).
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
    parts.next().is_none().then_some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# syntax=docker/dockerfile:1\n\
        FROM docker.io/library/rust:1.88-slim-bookworm AS builder\n\
        WORKDIR /src\nCOPY . .\n\
        RUN --mount=type=cache,target=/src/target \\\n    cargo build --release --locked -p token-cli --bin tokencache \\\n    && install -D target/release/tokencache /out/tokencache\n\
        FROM gcr.io/distroless/cc-debian12:nonroot\n\
        COPY --from=builder /out/tokencache /usr/local/bin/tokencache\n\
        ENTRYPOINT [\"/usr/local/bin/tokencache\"]\nCMD [\"serve\"]\n";

    fn members() -> Vec<Member> {
        vec![
            Member::parse(
                "[package]\nname = \"token-cli\"\n\n[[bin]]\nname = \"tokencache\"\npath = \"src/main.rs\"\n\n[dependencies]\nname = \"x\"\n",
                true,
            )
            .unwrap(),
            Member::parse("[package]\nname = \"token-core\"\n", false).unwrap(),
            Member::parse("[package]\nname = \"xtask\"\n", true).unwrap(),
        ]
    }

    fn problems(dockerfile: &str, rust_version: &str) -> Vec<String> {
        check("deploy/Dockerfile", dockerfile, rust_version, &members())
    }

    #[test]
    fn members_name_their_binaries() {
        let m = members();
        assert_eq!(m[0].bins, ["tokencache"]);
        assert!(m[1].bins.is_empty());
        assert_eq!(m[2].bins, ["xtask"]);
    }

    #[test]
    fn the_projects_dockerfile_shape_passes() {
        assert_eq!(problems(GOOD, "1.88"), Vec::<String>::new());
        assert_eq!(problems(GOOD, "1.87"), Vec::<String>::new());
        let newer = GOOD.replace("rust:1.88-slim", "rust:1.90.0-slim");
        assert_eq!(problems(&newer, "1.88"), Vec::<String>::new());
    }

    #[test]
    fn a_builder_older_than_the_workspace_rust_version_fails() {
        assert_eq!(
            problems(GOOD, "1.89"),
            ["deploy/Dockerfile builds with rust:1.88-slim-bookworm, older than the workspace rust-version 1.89 in Cargo.toml: use rust:1.89 or newer"]
        );
        let latest = GOOD.replace("rust:1.88-slim-bookworm", "rust:slim");
        assert!(problems(&latest, "1.88")[0].contains("a tag without a version"));
        let none = GOOD.replace("docker.io/library/rust:1.88-slim-bookworm", "debian:12");
        assert!(problems(&none, "1.88")[0].contains("has no builder stage"));
    }

    #[test]
    fn a_package_or_binary_the_workspace_lacks_fails() {
        let renamed = GOOD.replace("-p token-cli", "-p tokencache-cli");
        let p = problems(&renamed, "1.88");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("deploy/Dockerfile builds `-p tokencache-cli`, which is not a package of the workspace (packages: token-cli, token-core, xtask)"),
            "{p:?}"
        );
        let wrong_package = GOOD.replace("-p token-cli", "-p token-core");
        assert!(problems(&wrong_package, "1.88")[0].contains(
            "the binary tokencache belongs to the package token-cli: use `-p token-cli`"
        ),);
        let wrong_bin = GOOD
            .replace("--bin tokencache", "--bin tokencached")
            .replace("release/tokencache ", "release/tokencached ");
        let p = problems(&wrong_bin, "1.88");
        assert!(
            p[0].contains("the package token-cli has no such binary (its binaries: tokencache)"),
            "{p:?}"
        );
        // ... and then the ENTRYPOINT no longer runs what is built.
        assert!(
            p.iter().any(|x| x.contains(
                "ENTRYPOINT runs /usr/local/bin/tokencache, but the binary built is tokencached"
            )),
            "{p:?}"
        );
    }

    #[test]
    fn a_build_that_is_not_release_locked_and_named_fails() {
        let debug = GOOD.replace("--release --locked ", "");
        let p = problems(&debug, "1.88");
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("lacks --release"), "{p:?}");
        assert!(p[1].contains("lacks --locked"), "{p:?}");
        let unnamed = GOOD.replace(" -p token-cli", "");
        assert!(problems(&unnamed, "1.88")[0].contains("must name the package (-p)"));
        let none = GOOD.replace("cargo build", "cargo install");
        assert!(problems(&none, "1.88")[0].contains("runs no `cargo build`"));
    }

    #[test]
    fn a_runtime_stage_running_as_root_fails() {
        let root = GOOD.replace("ENTRYPOINT", "USER root\nENTRYPOINT");
        assert_eq!(
            problems(&root, "1.88"),
            ["deploy/Dockerfile's runtime stage runs as root (USER root): run as a non-root user, e.g. USER 65532:65532"]
        );
        let zero = GOOD.replace("ENTRYPOINT", "USER 0:0\nENTRYPOINT");
        assert!(problems(&zero, "1.88")[0].contains("runs as root (USER 0)"));
        let unset = GOOD.replace("cc-debian12:nonroot", "cc-debian12");
        assert!(problems(&unset, "1.88")[0].contains("sets no USER"));
        let set = unset.replace("ENTRYPOINT", "USER 65532:65532\nENTRYPOINT");
        assert_eq!(problems(&set, "1.88"), Vec::<String>::new());
    }

    #[test]
    fn a_binary_path_out_of_step_fails() {
        let moved = GOOD.replace(
            "COPY --from=builder /out/tokencache /usr/local/bin/tokencache",
            "COPY --from=builder /out/tokencache /usr/bin/tokencache",
        );
        assert_eq!(
            problems(&moved, "1.88"),
            ["deploy/Dockerfile's ENTRYPOINT runs /usr/local/bin/tokencache, but the runtime stage copies nothing from the build to that path"]
        );
        let not_copied = GOOD.replace(
            "install -D target/release/tokencache",
            "install -D target/debug/tokencache",
        );
        assert!(problems(&not_copied, "1.88")[0].contains("never copies target/release/tokencache"));
        let no_entry = GOOD.replace("ENTRYPOINT [\"/usr/local/bin/tokencache\"]\n", "");
        assert!(problems(&no_entry, "1.88")[0].contains("has no ENTRYPOINT"));
    }
}
