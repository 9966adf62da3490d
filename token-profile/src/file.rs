//! The profiles file: named profiles in TOML, so a script says
//! `tokencache get --profile orders` instead of repeating every flag, and
//! `tokencache serve` serves them all.
//!
//! The file is `--config PATH`, else `$TOKENCACHE_CONFIG`, else
//! `$XDG_CONFIG_HOME/tokencache/config.toml` (`~/.config/...`). Each
//! `[profiles.NAME]` table is a [`ProfileSpec`]; the `[serve]` table belongs
//! to the sidecar (token-serve), which parses it from [`ProfilesFile::text`].
//! Secrets themselves are not accepted in the file: it names where they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;
use crate::paths;
use crate::spec::ProfileSpec;

/// The environment variable naming the profile file.
pub const CONFIG_ENV: &str = "TOKENCACHE_CONFIG";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    profiles: BTreeMap<String, ProfileSpec>,
    /// The sidecar's table, which token-serve parses and checks.
    #[serde(default)]
    #[allow(dead_code)]
    serve: Option<toml::Table>,
}

/// A parsed profiles file: every profile, checked against the schema (an
/// unknown key, a secret written in the file, a value of the wrong type is
/// an error naming it), and the file's text for the tables other crates own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfilesFile {
    path: PathBuf,
    text: String,
    profiles: BTreeMap<String, ProfileSpec>,
}

impl ProfilesFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read the profile file {}: {e}",
                path.display()
            ))
        })?;
        Self::parse(path, text)
    }

    /// Parses `text`, the contents of the file at `path` (named in errors).
    pub fn parse(path: &Path, text: String) -> Result<Self, Error> {
        let file: File = toml::from_str(&text).map_err(|e| {
            Error::config(format!(
                "the profile file {} is not valid: {}",
                path.display(),
                e.message().trim_end()
            ))
        })?;
        Ok(Self {
            path: path.to_owned(),
            text,
            profiles: file.profiles,
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text (for the `[serve]` table's parser).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every profile, by name.
    pub fn profiles(&self) -> &BTreeMap<String, ProfileSpec> {
        &self.profiles
    }

    /// Profile `name`, or an error naming the ones the file has.
    pub fn profile(&self, name: &str) -> Result<&ProfileSpec, Error> {
        self.profiles.get(name).ok_or_else(|| {
            let known = self.profiles.keys().cloned().collect::<Vec<_>>().join(", ");
            Error::config(format!(
                "the profile file {} has no profile [profiles.{name}] (it has: {})",
                self.path.display(),
                if known.is_empty() { "none" } else { &known }
            ))
        })
    }
}

/// The profile file's path: `flag` (`--config`), else `$TOKENCACHE_CONFIG`,
/// else `$XDG_CONFIG_HOME/tokencache/config.toml`.
pub fn config_path(flag: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(paths::config_dir()?.join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_profile_and_refuses_secrets_in_the_file() {
        let text = r#"
            [profiles.a]
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            scopes = ["x", "y"]
        "#;
        let file: File = toml::from_str(text).expect("valid");
        assert_eq!(file.profiles["a"].scopes, ["x", "y"]);
        let bad = "[profiles.a]\nclient_secret = \"s\"\n";
        assert!(toml::from_str::<File>(bad).is_err());
    }

    #[test]
    fn parses_refresh_token_and_managed_identity_keys_but_no_refresh_token_itself() {
        let text = r#"
            [profiles.rt]
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            refresh_token_env = "MY_RT"
            [profiles.mi]
            managed_identity = "app-service"
            identity = "id-1"
        "#;
        let file: File = toml::from_str(text).expect("valid");
        assert_eq!(
            file.profiles["rt"].refresh_token_env.as_deref(),
            Some("MY_RT")
        );
        assert_eq!(
            file.profiles["mi"].managed_identity,
            Some(crate::ManagedKind::AppService)
        );
        let bad = "[profiles.a]\nrefresh_token = \"rt\"\n";
        assert!(toml::from_str::<File>(bad).is_err());
    }

    #[test]
    fn a_dpop_key_puts_its_thumbprint_in_the_request_and_two_sources_are_refused() {
        let text = r#"
            [profiles.gen]
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            dpop_generate_key = "Ed25519"
            [profiles.both]
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            dpop_generate_key = "ES256"
            dpop_key_file = "/nonexistent/dpop.jwk"
            [profiles.file]
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            dpop_key_file = "/nonexistent/dpop.jwk"
            [profiles.alg]
            token_url = "http://127.0.0.1:1/token"
            client_id = "c"
            dpop_generate_key = "RS256"
        "#;
        let file: File = toml::from_str(text).expect("valid");
        let naming = crate::Naming::FileKeys;
        let resolved = file.profiles["gen"]
            .clone()
            .resolve(naming)
            .expect("resolves");
        let key = resolved.dpop_key().expect("a generated key");
        assert_eq!(key.algorithm(), token_http::DpopAlgorithm::EdDsa);
        let request = crate::token_request(&resolved);
        assert_eq!(request.dpop_thumbprint(), Some(key.thumbprint()));
        let e = file.profiles["both"].clone().resolve(naming).unwrap_err();
        assert!(e.to_string().contains("two sources"), "{e}");
        let e = file.profiles["file"].clone().resolve(naming).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dpop.jwk"), "{e}");
        let e = file.profiles["alg"].clone().resolve(naming).unwrap_err();
        assert!(e.to_string().contains("RS256"), "{e}");
    }
}
