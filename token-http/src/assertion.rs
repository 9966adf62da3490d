//! Client assertions minted elsewhere (RFC 7521/7523): workload identity
//! federation reads them from a file that rotates under us (a Kubernetes
//! projected service-account token, `AZURE_FEDERATED_TOKEN_FILE`, a SPIFFE
//! JWT-SVID), or code mints them itself.

use std::fmt;
use std::future::Future;
use std::io::{ErrorKind, Read as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use token_core::{CredentialError, Secret};
use zeroize::Zeroizing;

/// A client assertion file larger than this is refused: a JWT-SVID or a
/// projected service-account token is a few KiB, so a bigger file is the
/// wrong file.
pub const MAX_ASSERTION_BYTES: u64 = 64 * 1024;

/// Where a credential gets the client assertion it sends
/// (`client_assertion`, with `client_assertion_type` jwt-bearer) at each
/// token request.
///
/// # Contract
///
/// - [`assertion`](Self::assertion) is called once per token request, so
///   a rotated assertion is picked up by the next fetch; it returns the
///   assertion text (a secret) or an error saying what is wrong, without
///   quoting the assertion.
/// - [`id`](Self::id) is stable across processes and restarts and holds no
///   secret: it becomes part of the credential's id, hence of cache keys.
#[async_trait]
pub trait AssertionSource: Send + Sync + 'static {
    /// A stable, secret-free name of the source (a path, a label).
    fn id(&self) -> &str;

    /// The current assertion.
    async fn assertion(&self) -> Result<Secret, CredentialError>;
}

/// A client assertion read from a file at every token request.
///
/// The file is read whole (at most [`MAX_ASSERTION_BYTES`]) and trimmed of
/// surrounding whitespace; a missing, unreadable or empty file is an error
/// naming the path. The contents are a [`Secret`]: never logged, never in
/// an error. Its [`id`](AssertionSource::id) is `file:<path>`.
#[derive(Clone)]
pub struct AssertionFile {
    path: PathBuf,
    id: String,
}

impl AssertionFile {
    /// The assertion at `path`. The file need not exist yet (a projected
    /// token may be mounted after start-up); it is read at each fetch.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let id = format!("file:{}", path.display());
        Self { path, id }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl AssertionSource for AssertionFile {
    fn id(&self) -> &str {
        &self.id
    }

    async fn assertion(&self) -> Result<Secret, CredentialError> {
        // A file of a few KiB on a local or in-memory volume (projected
        // tokens live on tmpfs): read inline, once per token fetch, rather
        // than paying a blocking-pool hop.
        read_assertion(&self.path)
    }
}

fn read_assertion(path: &Path) -> Result<Secret, CredentialError> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        let message = format!("could not open the client assertion file {shown}: {e}");
        match e.kind() {
            // Configuration: retrying will not create the file any sooner
            // than the next request does.
            ErrorKind::NotFound | ErrorKind::PermissionDenied => {
                CredentialError::permanent(message)
            }
            _ => CredentialError::transient(message),
        }
    })?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_ASSERTION_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            CredentialError::transient(format!(
                "could not read the client assertion file {shown}: {e}"
            ))
        })?;
    if bytes.len() as u64 > MAX_ASSERTION_BYTES {
        return Err(CredentialError::permanent(format!(
            "the client assertion file {shown} is larger than {MAX_ASSERTION_BYTES} bytes; it is not an assertion"
        )));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        CredentialError::permanent(format!(
            "the client assertion file {shown} is not UTF-8 text"
        ))
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(CredentialError::permanent(format!(
            "the client assertion file {shown} is empty"
        )));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(CredentialError::permanent(format!(
            "the client assertion file {shown} holds more than one token (whitespace inside); it should hold one JWT"
        )));
    }
    Ok(Secret::new(text))
}

impl fmt::Debug for AssertionFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionFile")
            .field("path", &self.path)
            .finish()
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Secret, CredentialError>> + Send>>;

/// A client assertion minted by the caller's code at each token request
/// (for example a JWT signed by a KMS or an HSM).
///
/// ```
/// use token_core::Secret;
/// use token_http::AssertionFn;
///
/// let source = AssertionFn::new("kms:orders-signer", || async {
///     // ... ask the signer ...
///     Ok(Secret::new("eyJhbGciOi..."))
/// });
/// # let _ = source;
/// ```
#[derive(Clone)]
pub struct AssertionFn {
    id: String,
    mint: Arc<dyn Fn() -> BoxFuture + Send + Sync>,
}

impl AssertionFn {
    /// `mint` is called at each token request; `id` names it in the
    /// credential's id (stable, no secret).
    pub fn new<F, Fut>(id: impl Into<String>, mint: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Secret, CredentialError>> + Send + 'static,
    {
        Self {
            id: format!("fn:{}", id.into()),
            mint: Arc::new(move || Box::pin(mint())),
        }
    }
}

#[async_trait]
impl AssertionSource for AssertionFn {
    fn id(&self) -> &str {
        &self.id
    }

    async fn assertion(&self) -> Result<Secret, CredentialError> {
        let assertion = (self.mint)().await?;
        if assertion.is_empty() {
            return Err(CredentialError::permanent(format!(
                "the client assertion callback `{}` returned an empty assertion",
                self.id
            )));
        }
        Ok(assertion)
    }
}

impl fmt::Debug for AssertionFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionFn").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "token-http-assertion-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn the_file_is_read_at_every_call_and_trimmed() {
        let path = temp_dir("reread").join("token");
        std::fs::write(&path, "first.jwt.sig\n").unwrap();
        let source = AssertionFile::new(&path);
        assert_eq!(source.assertion().await.unwrap().expose(), "first.jwt.sig");
        std::fs::write(&path, "  second.jwt.sig  \n").unwrap();
        assert_eq!(source.assertion().await.unwrap().expose(), "second.jwt.sig");
    }

    #[tokio::test]
    async fn missing_empty_or_wrong_files_are_errors_naming_the_path() {
        let dir = temp_dir("errors");
        let missing = dir.join("missing");
        let e = AssertionFile::new(&missing).assertion().await.unwrap_err();
        assert!(!e.is_transient(), "{e}");
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );

        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").unwrap();
        let e = AssertionFile::new(&empty).assertion().await.unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        assert!(e.to_string().contains(&empty.display().to_string()), "{e}");

        let two = dir.join("two");
        std::fs::write(&two, "secret-one\nsecret-two\n").unwrap();
        let e = AssertionFile::new(&two).assertion().await.unwrap_err();
        assert!(!e.to_string().contains("secret-one"), "{e}");

        let big = dir.join("big");
        std::fs::write(&big, "a".repeat(MAX_ASSERTION_BYTES as usize + 1)).unwrap();
        let e = AssertionFile::new(&big).assertion().await.unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[tokio::test]
    async fn a_callback_is_called_every_time_and_an_empty_answer_is_refused() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let source = AssertionFn::new("minter", move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                Ok(Secret::new(if n == 0 {
                    "a.b.c".into()
                } else {
                    String::new()
                }))
            }
        });
        assert_eq!(source.id(), "fn:minter");
        assert_eq!(source.assertion().await.unwrap().expose(), "a.b.c");
        let e = source.assertion().await.unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(format!("{source:?}"), "AssertionFn { id: \"fn:minter\" }");
    }
}
