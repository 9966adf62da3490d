use token_core::EncryptionKey;

use super::*;
use crate::resolve::Naming;
use crate::spec::ProfileSpec;

const URL: &str = "http://127.0.0.1:9/token";

fn keys() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../token-http/tests/keys")
}

fn fingerprints() -> FingerprintKey {
    FingerprintKey::derive(&EncryptionKey::from_bytes([3; 32]))
}

/// A spec from `--flag value` pairs (switches stand alone), written as
/// the profile file's keys, over client `c` at [`URL`].
fn spec(args: &[&str]) -> ProfileSpec {
    let mut toml = String::new();
    let mut it = args.iter().peekable();
    while let Some(flag) = it.next() {
        let key = flag.trim_start_matches("--").replace('-', "_");
        match it.peek() {
            Some(v) if !v.starts_with("--") => {
                toml.push_str(&format!("{key} = {:?}\n", it.next().expect("value")));
            }
            _ => toml.push_str(&format!("{key} = true\n")),
        }
    }
    toml::from_str(&toml).expect("a spec")
}

fn parse(args: &[&str]) -> Resolved {
    let mut s = spec(args);
    s.client_id = Some("c".into());
    s.token_url = Some(URL.into());
    s.resolve(Naming::Flags).expect("resolves")
}

fn file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("utf-8").to_owned()
}

/// The bound id and the unbound one (what `StoredRefreshToken` keys
/// its record by).
fn ids(s: &Resolved) -> (String, String) {
    let (credential, binding) = credential(s, URL, &fingerprints()).expect("credential");
    let inner = credential.id().to_owned();
    (Bound::new(credential, binding).id().to_owned(), inner)
}

#[test]
fn a_refresh_token_grant_is_bound_to_its_client_secret_and_never_to_the_refresh_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt1 = file(dir.path(), "rt1", "first-refresh-token\n");
    let rt2 = file(dir.path(), "rt2", "another-refresh-token\n");
    let good = file(dir.path(), "good", "good-secret\n");
    let bad = file(dir.path(), "bad", "wrong-secret\n");
    let with = |rt: &str, secret: &str| {
        parse(&["--refresh-token-file", rt, "--client-secret-file", secret])
    };
    let (bound_good, inner_good) = ids(&with(&rt1, &good));
    let (bound_bad, inner_bad) = ids(&with(&rt1, &bad));
    assert!(bound_good.contains("|fp=cs:"), "{bound_good}");
    assert_ne!(bound_good, bound_bad, "another secret misses the cache");
    // The stored refresh token's record key derives from the unbound
    // id: a rotated client secret keeps finding the newest one.
    assert_eq!(inner_good, inner_bad);
    assert!(!inner_good.contains("fp="));
    // The binding is the secret's alone, whatever the refresh token.
    let binding = |s: &Resolved| credential(s, URL, &fingerprints()).expect("credential").1;
    assert_eq!(binding(&with(&rt1, &good)), binding(&with(&rt2, &good)));
    assert!(!bound_good.contains("first-refresh-token"));
    assert!(!bound_good.contains("good-secret"));

    // A public client has nothing to bind to.
    let public = parse(&["--refresh-token-file", &rt1]);
    assert_eq!(binding(&public), Binding::None);
}

#[test]
fn keys_and_certificate_keys_are_fingerprinted_mtls_and_assertions_are_bound_by_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = keys();
    let path = |name: &str| keys.join(name).to_str().expect("utf-8").to_owned();

    let (rsa, _) = ids(&parse(&["--private-key-file", &path("rsa-test-only.pem")]));
    let (ec, _) = ids(&parse(&["--private-key-file", &path("ec-test-only.pem")]));
    assert!(rsa.contains("|fp=pk:") && ec.contains("|fp=pk:"), "{rsa}");
    assert_ne!(rsa, ec);

    let (cert, _) = ids(&parse(&[
        "--certificate-file",
        &path("rsa-test-only.crt"),
        "--private-key-file",
        &path("rsa-test-only.pem"),
    ]));
    assert!(
        cert.contains("x5t#S256=") && cert.contains("|fp=pk:"),
        "{cert}"
    );

    let (mtls, _) = ids(&parse(&[
        "--client-certificate-file",
        &path("mtls-client-test-only.pem"),
    ]));
    let (other, _) = ids(&parse(&[
        "--client-certificate-file",
        &path("mtls-other-test-only.pem"),
    ]));
    assert!(
        mtls.contains("x5t#S256=") && !mtls.contains("fp="),
        "{mtls}"
    );
    assert_ne!(mtls, other);

    let assertion = file(dir.path(), "assertion", "eyJhbGciOi.assertion.one\n");
    let (first, _) = ids(&parse(&["--client-assertion-file", &assertion]));
    std::fs::write(&assertion, "eyJhbGciOi.assertion.two\n").expect("rotate");
    let (rotated, _) = ids(&parse(&["--client-assertion-file", &assertion]));
    assert_eq!(first, rotated, "a rotated assertion keeps its entries");
    assert!(first.contains(&assertion) && !first.contains("assertion.one"));
    // Its entries are found only by a caller who can read the file.
    std::fs::remove_file(&assertion).expect("remove");
    let s = parse(&["--client-assertion-file", &assertion]);
    assert!(credential(&s, URL, &fingerprints()).is_err());
}

#[test]
fn two_client_authentications_or_none_are_incomplete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = file(dir.path(), "secret", "s\n");
    let assertion = file(dir.path(), "assertion", "a\n");
    let s = parse(&[
        "--client-secret-file",
        &secret,
        "--client-assertion-file",
        &assertion,
    ]);
    let Err(e) = credential(&s, URL, &fingerprints()) else {
        panic!("two methods refused")
    };
    assert_eq!(e.kind(), ErrorKind::Incomplete, "{e}");
    let Err(e) = credential(&parse(&[]), URL, &fingerprints()) else {
        panic!("no method refused")
    };
    assert_eq!(e.kind(), ErrorKind::Incomplete, "{e}");
}

#[test]
fn from_env_is_bound_to_the_secret_or_key_in_the_file_its_variables_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fk = fingerprints();
    let secret = file(dir.path(), "secret", "env-secret\n");
    let vars = |pairs: Vec<(&'static str, String)>| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        }
    };
    let b =
        env_binding(vars(vec![("TOKEN_CACHE_CLIENT_SECRET_FILE", secret)]), &fk).expect("binding");
    assert_eq!(b, Binding::fingerprint("cs", &fk, b"env-secret"));

    let key = keys().join("rsa-test-only.pem");
    let pem = std::fs::read_to_string(&key).expect("key");
    let key = key.to_str().expect("utf-8").to_owned();
    let cert = keys()
        .join("rsa-test-only.crt")
        .to_str()
        .expect("utf-8")
        .to_owned();
    let b = env_binding(
        vars(vec![
            ("AZURE_CLIENT_CERTIFICATE_PATH", cert.clone()),
            ("TOKEN_CACHE_PRIVATE_KEY_FILE", key.clone()),
        ]),
        &fk,
    )
    .expect("binding");
    assert_eq!(b, Binding::fingerprint("pk", &fk, pem.trim().as_bytes()));
    let b = env_binding(vars(vec![("TOKEN_CACHE_PRIVATE_KEY_FILE", key)]), &fk).expect("binding");
    assert_eq!(b, Binding::fingerprint("pk", &fk, pem.trim().as_bytes()));

    let b = env_binding(
        vars(vec![(
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/token".into(),
        )]),
        &fk,
    )
    .expect("binding");
    assert_eq!(b, Binding::None, "an assertion file is bound by its path");
}

#[test]
fn the_warm_path_declines_managed_identities_and_from_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join(warm::DIR)).expect("mkdir");
    let store = format!("sled:{}", dir.path().display());
    let managed = spec(&["--managed-identity", "gcp", "--store", &store]);
    let managed = managed.resolve(Naming::Flags).expect("resolves");
    assert!(warm_token(&managed).is_none());
    let from_env = spec(&["--from-env", "--store", &store]);
    let from_env = from_env.resolve(Naming::Flags).expect("resolves");
    assert!(warm_token(&from_env).is_none());
}
