//! [`ProfileSpec`]: one profile as the file writes it, and as a command
//! line overlays it ([`ProfileSpec::overlay`]). Every field is optional
//! here; [`ProfileSpec::resolve`](crate::ProfileSpec::resolve) checks that
//! what is given makes one credential.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

/// One profile: where tokens come from, what is asked for, and where they
/// are cached. Secrets themselves are never accepted: the spec names the
/// environment variable or file that holds each one.
///
/// ```toml
/// [profiles.orders]
/// token_url = "https://idp.example/oauth2/token"   # or: issuer = "https://idp.example"
/// client_id = "orders-client"
/// client_secret_file = "/run/secrets/orders"       # re-read when it changes
/// scopes = ["orders.read", "orders.write"]
/// store = "redis://redis.internal:6379"            # sled[:DIR] | memory | redis://...
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProfileSpec {
    /// The credential from the environment (`TOKEN_CACHE_*`, `AZURE_*`).
    #[serde(default)]
    pub from_env: bool,
    /// The token endpoint.
    pub token_url: Option<String>,
    /// The issuer whose token endpoint is discovered (OIDC / RFC 8414).
    pub issuer: Option<String>,
    /// The client id.
    pub client_id: Option<String>,
    /// The environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// The file holding the client secret (re-read when it changes).
    pub client_secret_file: Option<PathBuf>,
    /// The PEM private key for `private_key_jwt`.
    pub private_key_file: Option<PathBuf>,
    /// The environment variable holding the first refresh token.
    pub refresh_token_env: Option<String>,
    /// The file holding the first refresh token.
    pub refresh_token_file: Option<PathBuf>,
    /// A managed identity / metadata server instead of an IdP.
    pub managed_identity: Option<ManagedKind>,
    /// With `managed_identity`: which identity (client id or account).
    pub identity: Option<String>,
    /// The `kid` of the private key.
    pub key_id: Option<String>,
    /// A client assertion re-read from this file at every fetch.
    pub client_assertion_file: Option<PathBuf>,
    /// A certificate whose key signs `private_key_jwt` (`x5t#S256`).
    pub certificate_file: Option<PathBuf>,
    /// Also put `x5t` (SHA-1) in the assertion's header.
    #[serde(default)]
    pub x5t: bool,
    /// Also put the chain (`x5c`) in the assertion's header.
    #[serde(default)]
    pub x5c: bool,
    /// The client certificate (and key) for mutual-TLS client authentication.
    pub client_certificate_file: Option<PathBuf>,
    /// The client certificate's key, when apart from it.
    pub client_key_file: Option<PathBuf>,
    /// Extra PEM roots for TLS to the IdP.
    pub ca_file: Option<PathBuf>,
    /// The private key's algorithm.
    pub alg: Option<Alg>,
    /// The client authentication method, when the inputs do not imply one.
    pub auth: Option<AuthMethod>,
    /// The scopes asked for.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The audience asked for.
    pub audience: Option<String>,
    /// The resource asked for (RFC 8707).
    pub resource: Option<String>,
    /// Where tokens are cached: `sled`, `sled:DIR`, `memory` or a
    /// `redis://` URL (default: sled in the user's cache directory).
    pub store: Option<String>,
    /// How `tokencache get` prints the token.
    pub format: Option<Format>,
    /// The store's encryption key file.
    pub key_file: Option<PathBuf>,
    /// DPoP (RFC 9449): the proof-of-possession key (ES256 or Ed25519, PEM
    /// or JWK) tokens are bound to. Its thumbprint is part of the cache
    /// key; the key itself is never stored.
    pub dpop_key_file: Option<PathBuf>,
    /// DPoP with a key generated when the profile is loaded (`ES256` or
    /// `Ed25519`), for this process only: for a sidecar on a memory store.
    /// Instead of `dpop_key_file`.
    pub dpop_generate_key: Option<String>,
}

impl ProfileSpec {
    /// `self` with every setting `flags` gives laid over it (a command line
    /// over a profile). Settings that are one choice made of several keys
    /// are replaced whole: a flag for either client-secret source drops the
    /// profile's other, and likewise `token_url`/`issuer` and the two
    /// refresh-token sources. Switches are on when either turns them on.
    pub fn overlay(self, flags: ProfileSpec) -> ProfileSpec {
        let (client_secret_env, client_secret_file) =
            if flags.client_secret_env.is_some() || flags.client_secret_file.is_some() {
                (flags.client_secret_env, flags.client_secret_file)
            } else {
                (self.client_secret_env, self.client_secret_file)
            };
        let (token_url, issuer) = if flags.token_url.is_some() || flags.issuer.is_some() {
            (flags.token_url, flags.issuer)
        } else {
            (self.token_url, self.issuer)
        };
        let (refresh_token_env, refresh_token_file) =
            if flags.refresh_token_env.is_some() || flags.refresh_token_file.is_some() {
                (flags.refresh_token_env, flags.refresh_token_file)
            } else {
                (self.refresh_token_env, self.refresh_token_file)
            };
        ProfileSpec {
            from_env: flags.from_env || self.from_env,
            token_url,
            issuer,
            client_id: flags.client_id.or(self.client_id),
            client_secret_env,
            client_secret_file,
            private_key_file: flags.private_key_file.or(self.private_key_file),
            refresh_token_env,
            refresh_token_file,
            managed_identity: flags.managed_identity.or(self.managed_identity),
            identity: flags.identity.or(self.identity),
            key_id: flags.key_id.or(self.key_id),
            client_assertion_file: flags.client_assertion_file.or(self.client_assertion_file),
            certificate_file: flags.certificate_file.or(self.certificate_file),
            x5t: flags.x5t || self.x5t,
            x5c: flags.x5c || self.x5c,
            client_certificate_file: flags
                .client_certificate_file
                .or(self.client_certificate_file),
            client_key_file: flags.client_key_file.or(self.client_key_file),
            ca_file: flags.ca_file.or(self.ca_file),
            alg: flags.alg.or(self.alg),
            auth: flags.auth.or(self.auth),
            scopes: if flags.scopes.is_empty() {
                self.scopes
            } else {
                flags.scopes
            },
            audience: flags.audience.or(self.audience),
            resource: flags.resource.or(self.resource),
            store: flags.store.or(self.store),
            format: flags.format.or(self.format),
            key_file: flags.key_file.or(self.key_file),
            dpop_key_file: flags.dpop_key_file.or(self.dpop_key_file),
            dpop_generate_key: flags.dpop_generate_key.or(self.dpop_generate_key),
        }
    }

    /// The settings a managed identity does not use that this spec sets, as
    /// their file keys.
    pub(crate) fn not_for_managed_identity(&self) -> Option<&'static str> {
        [
            ("token_url", self.token_url.is_some()),
            ("issuer", self.issuer.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("private_key_file", self.private_key_file.is_some()),
            ("refresh_token_env", self.refresh_token_env.is_some()),
            ("refresh_token_file", self.refresh_token_file.is_some()),
            ("auth", self.auth.is_some()),
            (
                "client_assertion_file",
                self.client_assertion_file.is_some(),
            ),
            ("certificate_file", self.certificate_file.is_some()),
            (
                "client_certificate_file",
                self.client_certificate_file.is_some(),
            ),
            ("from_env", self.from_env),
            ("dpop_key_file", self.dpop_key_file.is_some()),
            ("dpop_generate_key", self.dpop_generate_key.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
    }
}

/// Defines a setting enum: its file/flag names, `FromStr`, `Display`,
/// serde, and (feature `clap`) clap's `ValueEnum`, from one list.
macro_rules! setting_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
        pub enum $name {
            $( $(#[$vmeta])* #[cfg_attr(feature = "clap", value(name = $text))] $variant, )+
        }

        impl $name {
            /// The name the file and the command line use.
            pub fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $text, )+ }
            }

            const NAMES: &'static [&'static str] = &[$($text),+];
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, String> {
                $( if text.eq_ignore_ascii_case($text) { return Ok(Self::$variant); } )+
                Err(format!(
                    "{} `{text}` is not one of: {}",
                    $what,
                    Self::NAMES.join(", ")
                ))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

setting_enum! {
    /// A managed identity / metadata server to get tokens from.
    ManagedKind, "managed_identity" {
        /// Azure VM / scale set: the Instance Metadata Service (host from
        /// AZURE_POD_IDENTITY_AUTHORITY_HOST when set).
        AzureImds = "azure-imds",
        /// Azure App Service, Functions, Container Apps: IDENTITY_ENDPOINT and
        /// IDENTITY_HEADER.
        AppService = "app-service",
        /// Google Cloud: the metadata server (host from GCE_METADATA_HOST when
        /// set).
        Gcp = "gcp",
    }
}

setting_enum! {
    /// Client authentication.
    AuthMethod, "auth" {
        /// client_secret_basic.
        Basic = "basic",
        /// client_secret_post.
        Post = "post",
        /// private_key_jwt (with --private-key-file, or --certificate-file).
        PrivateKeyJwt = "private-key-jwt",
        /// A client assertion from --client-assertion-file, re-read every fetch.
        ClientAssertion = "client-assertion",
        /// tls_client_auth (RFC 8705): a CA-issued --client-certificate-file.
        TlsClientAuth = "tls-client-auth",
        /// self_signed_tls_client_auth (RFC 8705): a registered self-signed
        /// --client-certificate-file.
        SelfSignedTlsClientAuth = "self-signed-tls-client-auth",
    }
}

setting_enum! {
    /// The signing algorithm of a private key.
    Alg, "alg" {
        /// RSA PKCS#1 v1.5 with SHA-256.
        Rs256 = "RS256",
        /// ECDSA P-256 with SHA-256.
        Es256 = "ES256",
    }
}

setting_enum! {
    /// How `tokencache get` prints the token.
    Format, "format" {
        /// The token alone.
        Token = "token",
        /// `Bearer <token>`, for an Authorization header.
        Header = "header",
        /// A JSON object: access_token, token_type, expires_at, expires_in,
        /// from_cache.
        Json = "json",
        /// The `Authorization` and `DPoP` header lines for one request
        /// (`tokencache get --format dpop-headers --method GET --url URL`).
        DpopHeaders = "dpop-headers",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_for_one_secret_source_drops_the_profiles_other() {
        let profile = ProfileSpec {
            client_secret_file: Some("/run/secret".into()),
            token_url: Some("https://idp/token".into()),
            scopes: vec!["a".into()],
            ..ProfileSpec::default()
        };
        let flags = ProfileSpec {
            client_secret_env: Some("SECRET".into()),
            issuer: Some("https://other".into()),
            ..ProfileSpec::default()
        };
        let merged = profile.overlay(flags);
        assert_eq!(merged.client_secret_env.as_deref(), Some("SECRET"));
        assert_eq!(merged.client_secret_file, None);
        assert_eq!(merged.token_url, None);
        assert_eq!(merged.issuer.as_deref(), Some("https://other"));
        assert_eq!(merged.scopes, ["a"], "no --scope keeps the profile's");
    }

    #[test]
    fn setting_names_parse_in_any_case_and_name_the_choices_when_wrong() {
        assert_eq!("es256".parse::<Alg>(), Ok(Alg::Es256));
        assert_eq!(
            "APP-SERVICE".parse::<ManagedKind>(),
            Ok(ManagedKind::AppService)
        );
        let e = "bearer".parse::<AuthMethod>().expect_err("unknown");
        assert!(
            e.contains("auth `bearer`") && e.contains("private-key-jwt"),
            "{e}"
        );
    }
}
