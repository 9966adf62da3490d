//! How to reach Redis and how the store behaves: [`RedisConfig`].

use std::fmt;
use std::time::Duration;

use token_core::Secret;

use crate::error::RedisStoreError;

/// Prefix of every key the store writes, unless configured otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "token-cache:";

/// Each Redis command (connecting included) is abandoned after this long.
///
/// A loopback or same-zone Redis answers in well under a millisecond; 250 ms
/// rides out a fork for a snapshot or a slow network hop, and leaves room
/// for the lease read-back (a second command) inside the engine's own store
/// timeout (`DEFAULT_STORE_TIMEOUT`, 2 s).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// A single TCP connect plus handshake is abandoned after this long.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The circuit opens after this many failures in a row (timeouts or
/// connection errors; error replies from a live server do not count).
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 3;

/// While open, the circuit fails every call at once for this long, then lets
/// one probe through: a dead Redis costs each request nothing, and recovery
/// is noticed within a second.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(1);

/// After this many timeouts in a row the connection is replaced by a new
/// one. A connection whose peer vanished without closing it (a half-open
/// TCP connection, a frozen server) never reports an error, only timeouts,
/// and the driver's connection manager only reconnects on errors.
pub const DEFAULT_REPLACE_AFTER_TIMEOUTS: u32 = 2;

/// Where the servers are.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Standalone(String),
    Cluster(Vec<String>),
}

/// How a [`RedisStore`](crate::RedisStore) connects and behaves. Every
/// setter says its default.
///
/// ```
/// use std::time::Duration;
/// use token_redis::RedisConfig;
///
/// let keyring = token_core::Keyring::new(token_core::EncryptionKey::generate()?);
/// let config = RedisConfig::new("redis://127.0.0.1:6380/0")
///     .with_encryption(keyring)
///     .with_username("token-cache")
///     .with_password("s3cret")
///     .with_key_prefix("myapp:tokens:")
///     .with_command_timeout(Duration::from_millis(200));
/// // Passwords never show:
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), token_core::KeyError>(())
/// ```
///
/// # Encrypted unless you say otherwise
///
/// A store is built with either [`with_encryption`](Self::with_encryption)
/// (tokens sealed with AES-256-GCM) or [`with_plaintext`](Self::with_plaintext)
/// (tokens in clear, a named choice); connecting with neither is
/// [`RedisStoreError::InvalidConfig`].
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) target: Target,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) key_prefix: String,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_open_for: Duration,
    pub(crate) replace_after_timeouts: u32,
    pub(crate) events: bool,
    pub(crate) connect_at_start: bool,
    #[cfg(feature = "encryption")]
    pub(crate) keyring: Option<std::sync::Arc<token_core::Keyring>>,
    #[cfg(feature = "tls")]
    pub(crate) tls: crate::tls::TlsSettings,
    /// Tokens are stored in clear, as chosen with
    /// [`with_plaintext`](RedisConfig::with_plaintext).
    pub(crate) plaintext: bool,
}

impl RedisConfig {
    /// A standalone server (or a proxy) at `url`: `redis://[user[:password]@]host[:port][/db]`,
    /// or `rediss://...` for TLS (cargo feature `tls`).
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_target(Target::Standalone(url.into()))
    }

    /// A Redis Cluster, discovered from one or more of its nodes' URLs.
    pub fn cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::with_target(Target::Cluster(urls.into_iter().map(Into::into).collect()))
    }

    fn with_target(target: Target) -> Self {
        Self {
            target,
            username: None,
            password: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
            replace_after_timeouts: DEFAULT_REPLACE_AFTER_TIMEOUTS,
            events: true,
            connect_at_start: false,
            #[cfg(feature = "encryption")]
            keyring: None,
            #[cfg(feature = "tls")]
            tls: crate::tls::TlsSettings::default(),
            plaintext: false,
        }
    }

    /// The ACL user. Defaults to the URL's, or none (the `default` user).
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (of the ACL user, or `requirepass`). Defaults to the
    /// URL's, or none. Kept as a [`Secret`]: never shown by `Debug`.
    pub fn with_password(mut self, password: impl Into<Secret>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Prefix of every key (and of the invalidation channel). Defaults to
    /// [`DEFAULT_KEY_PREFIX`]. Must not contain `{` or `}`: the store puts
    /// a hash tag after it so that a token and its lease share a cluster
    /// slot.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Timeout of each command. Defaults to [`DEFAULT_COMMAND_TIMEOUT`].
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Timeout of each connection attempt. Defaults to
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The circuit breaker: open after `failures` failures in a row, for
    /// `open_for`. Defaults to [`DEFAULT_BREAKER_THRESHOLD`] and
    /// [`DEFAULT_BREAKER_OPEN_FOR`].
    pub fn with_circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker_threshold = failures.max(1);
        self.breaker_open_for = open_for;
        self
    }

    /// Replace the connection after this many timeouts in a row. Defaults
    /// to [`DEFAULT_REPLACE_AFTER_TIMEOUTS`].
    pub fn with_replace_connection_after_timeouts(mut self, timeouts: u32) -> Self {
        self.replace_after_timeouts = timeouts.max(1);
        self
    }

    /// Whether to listen for other instances' events (one extra pub/sub
    /// connection per store): their invalidations, and their new tokens,
    /// which end a wait for their refresh at once. Without it this instance
    /// still publishes its own, drops invalidated tokens only at expiry, and
    /// ends such waits by the engine's slow lease poll. Defaults to on.
    pub fn with_invalidation_events(mut self, on: bool) -> Self {
        self.events = on;
        self
    }

    /// Whether [`RedisStore::connect`](crate::RedisStore::connect) fails
    /// when the server cannot be reached (`true`: fail fast, for one-shot
    /// commands and for services that must not start without Redis).
    /// Defaults to `false`: an unreachable server (refused, timed out,
    /// unresolvable, still loading) is connected to in the background, with
    /// backoff, and until then every call fails at once, so the engine
    /// serves from memory and the IdP. A configuration the server refuses
    /// (a wrong password, an untrusted certificate) is an error either way.
    pub fn with_connect_at_start(mut self, required: bool) -> Self {
        self.connect_at_start = required;
        self
    }

    /// Whether `connect` fails when the server cannot be reached (see
    /// [`with_connect_at_start`](Self::with_connect_at_start)).
    pub fn connect_at_start(&self) -> bool {
        self.connect_at_start
    }

    /// Seal every stored value with `keyring` (AES-256-GCM, bound to its
    /// cache key): nothing readable is stored in Redis. Every instance
    /// sharing the keys needs the same keyring.
    ///
    /// A store needs this or [`with_plaintext`](Self::with_plaintext):
    /// connecting with neither is [`RedisStoreError::InvalidConfig`], so
    /// that tokens never land in a shared Redis in clear by omission.
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    pub fn with_encryption(mut self, keyring: token_core::Keyring) -> Self {
        self.keyring = Some(std::sync::Arc::new(keyring));
        self
    }

    /// Store tokens in clear: anyone who can read Redis (its ACL users, a
    /// replica, an RDB or AOF file, a backup) can read every access and
    /// refresh token. The explicit opt-out from
    /// [`with_encryption`](Self::with_encryption), for a Redis that only
    /// this service can reach; connecting with neither is
    /// [`RedisStoreError::InvalidConfig`].
    pub fn with_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }

    /// Whether tokens are stored in clear
    /// ([`with_plaintext`](Self::with_plaintext)).
    pub fn plaintext(&self) -> bool {
        self.plaintext
    }

    /// Whether a keyring was configured.
    fn has_keyring(&self) -> bool {
        #[cfg(feature = "encryption")]
        return self.keyring.is_some();
        #[cfg(not(feature = "encryption"))]
        return false;
    }

    /// Trust exactly the CA certificates in `pem` (one or more PEM
    /// `CERTIFICATE` blocks) for `rediss://` servers, **instead of** the
    /// system's root certificates: the way to reach a Redis whose
    /// certificate a private CA issued. To trust a public CA as well, put it
    /// in the same bundle. Applies to every server of a cluster and to the
    /// pub/sub connections. Defaults to the system's roots.
    ///
    /// Needs `rediss://` URLs; the PEM is checked when the store is built
    /// (`connect` or `lazy`), and an unreadable one is
    /// [`RedisStoreError::InvalidConfig`].
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root_certificates = Some(pem.into());
        self
    }

    /// Present this client certificate (PEM chain, leaf first) and its
    /// private key (PEM: PKCS#8, PKCS#1 or SEC1) to `rediss://` servers that
    /// ask for one: mutual TLS, as with `tls-auth-clients yes`. Defaults to
    /// none.
    ///
    /// The key is zeroized when the last copy of this config is dropped and
    /// never appears in `Debug` output or in errors. The `redis` crate and
    /// rustls keep their own parsed copy for as long as the store lives,
    /// which this crate cannot zeroize.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn with_tls_client_certificate(
        mut self,
        certificate_chain_pem: impl Into<Vec<u8>>,
        private_key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some(crate::tls::ClientIdentity::new(
            certificate_chain_pem.into(),
            private_key_pem.into(),
        ));
        self
    }

    /// The key prefix in force.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The command timeout in force.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Checks what can be checked without a server.
    pub(crate) fn validate(&self) -> Result<(), RedisStoreError> {
        match (self.has_keyring(), self.plaintext) {
            (true, true) => {
                return Err(RedisStoreError::InvalidConfig(
                    "both with_encryption and with_plaintext were called: choose one".into(),
                ))
            }
            (false, false) => {
                let how = if cfg!(feature = "encryption") {
                    "call with_encryption(keyring)"
                } else {
                    "enable token-redis's `encryption` feature and call with_encryption(keyring)"
                };
                return Err(RedisStoreError::InvalidConfig(format!(
                    "tokens would be stored in Redis in clear: {how}, or with_plaintext() to \
                     accept that anyone who can read Redis can read them"
                )));
            }
            _ => {}
        }
        if self.key_prefix.contains(['{', '}']) {
            return Err(RedisStoreError::InvalidConfig(format!(
                "the key prefix {:?} contains `{{` or `}}`; the store adds its own hash tag",
                self.key_prefix
            )));
        }
        let urls: Vec<&String> = match &self.target {
            Target::Standalone(url) => vec![url],
            Target::Cluster(urls) if urls.is_empty() => {
                return Err(RedisStoreError::InvalidConfig(
                    "a cluster needs at least one node URL".into(),
                ))
            }
            Target::Cluster(urls) => urls.iter().collect(),
        };
        for url in &urls {
            let scheme = url.split("://").next().unwrap_or_default();
            match scheme {
                "redis" | "redis+unix" | "unix" => {}
                "rediss" if cfg!(feature = "tls") => {}
                "rediss" => {
                    return Err(RedisStoreError::InvalidConfig(format!(
                        "{} needs TLS: enable the `tls` feature of token-redis",
                        redact_url(url)
                    )))
                }
                _ => {
                    return Err(RedisStoreError::InvalidConfig(format!(
                        "{} is not a redis:// or rediss:// URL",
                        redact_url(url)
                    )))
                }
            }
        }
        #[cfg(feature = "tls")]
        self.tls.validate(&urls)?;
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(RedisStoreError::InvalidConfig(
                "timeouts must be longer than zero".into(),
            ));
        }
        Ok(())
    }

    /// Where the store connects, for messages: URLs with passwords hidden.
    pub(crate) fn describe_target(&self) -> String {
        match &self.target {
            Target::Standalone(url) => redact_url(url),
            Target::Cluster(urls) => format!(
                "cluster [{}]",
                urls.iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RedisConfig");
        d.field("target", &self.describe_target())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("key_prefix", &self.key_prefix)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_open_for", &self.breaker_open_for)
            .field("replace_after_timeouts", &self.replace_after_timeouts)
            .field("events", &self.events)
            .field("plaintext", &self.plaintext)
            .field("connect_at_start", &self.connect_at_start);
        #[cfg(feature = "encryption")]
        d.field("keyring", &self.keyring);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls);
        d.finish()
    }
}

/// `url` with the password of its user-info part (if any) replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // Not a URL we understand: show nothing of it that could be secret.
        return "<unparsable URL>".to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let userinfo = match userinfo.split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        // `redis://secret@host` is read by some clients as a password.
        None => "***".to_owned(),
    };
    format!("{scheme}://{userinfo}@{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("redis://user:pa:ss@host:1/0"),
            "redis://user:***@host:1/0"
        );
        assert_eq!(redact_url("rediss://:pw@h"), "rediss://:***@h");
        assert_eq!(redact_url("redis://pw@h/2"), "redis://***@h/2");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert_eq!(redact_url("garbage secret"), "<unparsable URL>");
    }

    #[test]
    fn debug_hides_passwords_everywhere() {
        let c = RedisConfig::cluster(["redis://u:hunter2@a:1", "redis://b:2"])
            .with_password("topsecret");
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && !text.contains("topsecret"),
            "{text}"
        );
        assert!(text.contains("u:***@a:1"), "{text}");
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        let err = RedisConfig::new("redis://h")
            .with_plaintext()
            .with_key_prefix("a{b}")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("hash tag"), "{err}");
        assert!(RedisConfig::new("http://x")
            .with_plaintext()
            .validate()
            .is_err());
        assert!(RedisConfig::cluster(Vec::<String>::new())
            .with_plaintext()
            .validate()
            .is_err());
    }

    #[test]
    fn a_store_is_encrypted_or_explicitly_plaintext() {
        let err = RedisConfig::new("redis://h").validate().unwrap_err();
        assert!(err.to_string().contains("with_plaintext()"), "{err}");
        assert!(RedisConfig::cluster(["redis://a:1"]).validate().is_err());
        assert!(RedisConfig::new("redis://h")
            .with_plaintext()
            .validate()
            .is_ok());
        #[cfg(feature = "encryption")]
        {
            let keyring =
                || token_core::Keyring::new(token_core::EncryptionKey::generate().expect("key"));
            let sealed = RedisConfig::new("redis://h").with_encryption(keyring());
            assert!(sealed.validate().is_ok() && !sealed.plaintext());
            let both = RedisConfig::new("redis://h")
                .with_encryption(keyring())
                .with_plaintext();
            assert!(both
                .validate()
                .unwrap_err()
                .to_string()
                .contains("choose one"));
        }
    }
}
