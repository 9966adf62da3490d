//! `get`'s client authentication beyond secrets and plain keys: which
//! method the given flags imply, certificates (`private_key_jwt` with
//! `x5t#S256`, mutual TLS) and client assertion files.

use std::path::Path;

use token_http::{Certificate, ClientCertificate, PrivateKey};
use zeroize::Zeroizing;

use crate::error::{Error, Missing};
use crate::resolve::Naming;
use crate::spec::AuthMethod;

/// Which authentication inputs were given (flags or profile).
pub(crate) struct Given {
    pub(crate) secret: bool,
    pub(crate) private_key: bool,
    pub(crate) certificate: bool,
    pub(crate) assertion_file: bool,
    pub(crate) client_certificate: bool,
}

impl Given {
    /// No authentication input at all.
    pub(crate) fn is_empty(&self) -> bool {
        !(self.secret
            || self.private_key
            || self.certificate
            || self.assertion_file
            || self.client_certificate)
    }
}

/// The method the inputs imply, when exactly one method's input was given;
/// otherwise an error naming what is missing or what conflicts.
pub(crate) fn infer(given: &Given, naming: Naming) -> Result<AuthMethod, Error> {
    let mut found: Vec<(AuthMethod, String)> = Vec::new();
    if given.secret {
        found.push((AuthMethod::Basic, "a client secret".to_owned()));
    }
    // A key with a certificate is the certificate's key.
    if given.certificate {
        found.push((AuthMethod::PrivateKeyJwt, naming.key("certificate_file")));
    } else if given.private_key {
        found.push((AuthMethod::PrivateKeyJwt, naming.key("private_key_file")));
    }
    if given.assertion_file {
        found.push((
            AuthMethod::ClientAssertion,
            naming.key("client_assertion_file"),
        ));
    }
    if given.client_certificate {
        found.push((
            AuthMethod::TlsClientAuth,
            naming.key("client_certificate_file"),
        ));
    }
    match found.as_slice() {
        [(method, _)] => Ok(*method),
        [] => Err(Error::incomplete(
            Some(Missing::ClientAuth),
            format!(
                "no client authentication: give {} VAR, {} PATH, {} PEM, {} PEM, {} PATH or {} PEM",
                naming.key("client_secret_env"),
                naming.key("client_secret_file"),
                naming.key("private_key_file"),
                naming.key("certificate_file"),
                naming.key("client_assertion_file"),
                naming.key("client_certificate_file"),
            ),
        )),
        many => {
            let names: Vec<&str> = many.iter().map(|(_, what)| what.as_str()).collect();
            Err(Error::incomplete(
                Some(Missing::ClientAuth),
                format!(
                    "more than one client authentication was given ({}): choose one with {}",
                    names.join(", "),
                    naming.key("auth")
                ),
            ))
        }
    }
}

/// A PEM file (a key, a certificate), in wiped memory.
pub(crate) fn read_pem(what: &str, path: &Path) -> Result<Zeroizing<String>, Error> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| Error::config(format!("cannot read the {what} {}: {e}", path.display())))
}

/// The `private_key_jwt` key named by the certificate at `cert_path`
/// (`x5t#S256`, and `x5t`/`x5c` when asked): `key` when given apart,
/// else the key in the certificate's own PEM.
pub(crate) fn certificate_key(
    cert_path: &Path,
    key: Option<PrivateKey>,
    key_id: Option<&str>,
    x5t: bool,
    x5c: bool,
    naming: Naming,
) -> Result<PrivateKey, Error> {
    let cert_pem = read_pem("certificate file", cert_path)?;
    let bad = |e: token_http::ConfigError| {
        Error::config(format!(
            "the certificate file {} is not usable: {e}",
            cert_path.display()
        ))
    };
    let certificate = Certificate::from_pem(&cert_pem).map_err(bad)?;
    let key = match key {
        Some(key) => key,
        None => {
            let key = PrivateKey::from_any_pem(&cert_pem).map_err(|e| {
                Error::config(format!(
                    "the certificate file {} holds no usable private key ({e}): put the key in \
                     it or give {} PEM",
                    cert_path.display(),
                    naming.key("private_key_file")
                ))
            })?;
            match key_id {
                Some(kid) => key.with_key_id(kid),
                None => key,
            }
        }
    };
    Ok(key
        .with_certificate(certificate)
        .map_err(bad)?
        .with_x5t(x5t)
        .with_x5c(x5c))
}

/// The mutual-TLS certificate and key (in the certificate's PEM unless
/// `key_path` is given).
pub(crate) fn client_certificate(
    cert_path: Option<&Path>,
    key_path: Option<&Path>,
    naming: Naming,
) -> Result<ClientCertificate, Error> {
    let path = cert_path.ok_or_else(|| {
        Error::incomplete(
            Some(Missing::ClientAuth),
            format!(
                "mutual-TLS client authentication needs {} PEM",
                naming.key("client_certificate_file")
            ),
        )
    })?;
    let cert_pem = read_pem("client certificate file", path)?;
    let key_pem = match key_path {
        Some(key) => read_pem("client key file", key)?,
        None => cert_pem.clone(),
    };
    ClientCertificate::from_pem_parts(&cert_pem, &key_pem).map_err(|e| {
        Error::config(format!(
            "the client certificate {} is not usable: {e}",
            path.display()
        ))
    })
}

/// A missing or empty assertion file is a configuration error at start-up,
/// naming the path (the credential says the same at each fetch).
pub(crate) fn check_assertion_file(path: &Path) -> Result<(), Error> {
    let text = read_pem("client assertion file", path)?;
    if text.trim().is_empty() {
        return Err(Error::config(format!(
            "the client assertion file {} is empty",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given() -> Given {
        Given {
            secret: false,
            private_key: false,
            certificate: false,
            assertion_file: false,
            client_certificate: false,
        }
    }

    #[test]
    fn one_input_implies_its_method_and_two_are_refused_by_name() {
        let g = Given {
            assertion_file: true,
            ..given()
        };
        assert_eq!(
            infer(&g, Naming::Flags).unwrap(),
            AuthMethod::ClientAssertion
        );
        let g = Given {
            certificate: true,
            private_key: true,
            ..given()
        };
        assert_eq!(infer(&g, Naming::Flags).unwrap(), AuthMethod::PrivateKeyJwt);
        let g = Given {
            secret: true,
            client_certificate: true,
            ..given()
        };
        let e = infer(&g, Naming::Flags).unwrap_err().to_string();
        assert!(
            e.contains("a client secret") && e.contains("--client-certificate-file"),
            "{e}"
        );
        assert!(infer(&given(), Naming::Flags).is_err());
    }
}
