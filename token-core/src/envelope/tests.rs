//! The envelope's tests: keys, keyrings, sealing and opening.

use super::*;

fn key_n(n: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([n; KEY_LEN])
}

fn ck(s: &str) -> CacheKey {
    CacheKey::from_raw(s)
}

const PLAIN: &[u8] = b"{\"s\":\"very-secret-token\"}";

#[test]
fn round_trip_and_fresh_nonce_per_seal() {
    let ring = Keyring::new(key_n(1));
    let a = ring.seal(&ck("k"), PLAIN).unwrap();
    let b = ring.seal(&ck("k"), PLAIN).unwrap();
    assert_ne!(a, b);
    assert_eq!(a.len(), PLAIN.len() + ENVELOPE_OVERHEAD);
    assert_eq!(a[0], ENVELOPE_VERSION);
    assert_eq!(&**ring.open(&ck("k"), &a).unwrap(), PLAIN);
    assert_eq!(&**ring.open(&ck("k"), &b).unwrap(), PLAIN);
    assert_eq!(envelope_key_id(&a).unwrap(), ring.current_key_id());
    let empty = ring.seal(&ck("k"), b"").unwrap();
    assert!(ring.open(&ck("k"), &empty).unwrap().is_empty());
}

#[test]
fn rotation_opens_old_values_and_seals_with_the_new_key() {
    let old = Keyring::new(key_n(1));
    let sealed_old = old.seal(&ck("k"), PLAIN).unwrap();
    let ring = Keyring::new(key_n(2)).with_previous(key_n(1)).unwrap();
    assert_eq!(&**ring.open(&ck("k"), &sealed_old).unwrap(), PLAIN);
    let sealed_new = ring.seal(&ck("k"), PLAIN).unwrap();
    assert_eq!(envelope_key_id(&sealed_new).unwrap(), key_n(2).id());
    assert_eq!(ring.key_ids(), vec![key_n(2).id(), key_n(1).id()]);
    // The old keyring alone cannot read what the new key sealed.
    assert_eq!(
        old.open(&ck("k"), &sealed_new).unwrap_err(),
        EnvelopeError::UnknownKeyId { id: key_n(2).id() }
    );
    assert!(matches!(
        Keyring::new(key_n(2)).with_previous(key_n(2)),
        Err(KeyError::DuplicateKey { .. })
    ));
}

#[test]
fn a_different_key_under_the_same_id_fails_authentication() {
    let ring = Keyring::new(key_n(1));
    let mut sealed = ring.seal(&ck("k"), PLAIN).unwrap();
    let other = Keyring::new(key_n(3));
    sealed[1..HEADER_LEN].copy_from_slice(&other.current_key_id().to_bytes());
    assert_eq!(
        other.open(&ck("k"), &sealed).unwrap_err(),
        EnvelopeError::AuthenticationFailed
    );
}

#[test]
fn long_cache_keys_round_trip_and_stay_bound() {
    let ring = Keyring::new(key_n(1));
    let long = "k".repeat(1000);
    let sealed = ring.seal(&ck(&long), PLAIN).unwrap();
    assert_eq!(&**ring.open(&ck(&long), &sealed).unwrap(), PLAIN);
    let other = format!("{long}x");
    assert_eq!(
        ring.open(&ck(&other), &sealed).unwrap_err(),
        EnvelopeError::AuthenticationFailed
    );
    let at_edge = "e".repeat(256 - HEADER_LEN);
    let sealed = ring.seal(&ck(&at_edge), PLAIN).unwrap();
    assert_eq!(&**ring.open(&ck(&at_edge), &sealed).unwrap(), PLAIN);
}

#[test]
fn an_envelope_is_bound_to_its_cache_key() {
    let ring = Keyring::new(key_n(1));
    let a = ring.seal(&ck("a"), b"token for a").unwrap();
    let b = ring.seal(&ck("b"), b"token for b").unwrap();
    for (key, value) in [("a", &b), ("b", &a), ("a ", &a), ("", &a)] {
        assert_eq!(
            ring.open(&ck(key), value).unwrap_err(),
            EnvelopeError::AuthenticationFailed
        );
    }
}

#[test]
fn every_bit_flip_and_truncation_fails_cleanly() {
    let ring = Keyring::new(key_n(1));
    let sealed = ring.seal(&ck("k"), PLAIN).unwrap();
    for i in 0..sealed.len() {
        for bit in 0..8 {
            let mut b = sealed.clone();
            b[i] ^= 1 << bit;
            let err = ring.open(&ck("k"), &b).unwrap_err();
            let expected_kind = match i {
                0 => matches!(err, EnvelopeError::UnsupportedVersion { .. }),
                1..HEADER_LEN => matches!(err, EnvelopeError::UnknownKeyId { .. }),
                _ => err == EnvelopeError::AuthenticationFailed,
            };
            assert!(expected_kind, "byte {i} bit {bit}: {err:?}");
        }
    }
    for len in 0..sealed.len() {
        let err = ring.open(&ck("k"), &sealed[..len]).unwrap_err();
        match len {
            0..ENVELOPE_OVERHEAD => assert!(
                matches!(err, EnvelopeError::Malformed { len: l, .. } if l == len),
                "{len}: {err:?}"
            ),
            _ => assert_eq!(err, EnvelopeError::AuthenticationFailed, "{len}"),
        }
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert_eq!(
        ring.open(&ck("k"), &longer).unwrap_err(),
        EnvelopeError::AuthenticationFailed
    );
}

#[test]
fn constructors_accept_raw_base64_env_and_file() {
    let key = key_n(7);
    let b64 = key.to_base64();
    assert_eq!(EncryptionKey::from_base64(&b64).unwrap().id(), key.id());
    let url_no_pad = b64
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    assert_eq!(
        EncryptionKey::from_base64(&format!("  {url_no_pad}\n"))
            .unwrap()
            .id(),
        key.id()
    );
    assert_eq!(EncryptionKey::from_slice(&[7; 32]).unwrap().id(), key.id());

    let var = "TOKEN_CORE_ENVELOPE_TEST_KEYS";
    std::env::set_var(var, format!("{}, {}", &*b64, &*key_n(8).to_base64()));
    let ring = Keyring::from_env(var).unwrap();
    assert_eq!(ring.key_ids(), vec![key.id(), key_n(8).id()]);
    std::env::set_var(var, &*b64);
    assert_eq!(EncryptionKey::from_env(var).unwrap().id(), key.id());
    std::env::remove_var(var);

    let dir = std::env::temp_dir().join(format!(
        "token-core-envelope-{:x}",
        crate::rng::random_u128()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("raw.key");
    std::fs::write(&raw, [7u8; 32]).unwrap();
    assert_eq!(EncryptionKey::from_file(&raw).unwrap().id(), key.id());
    assert_eq!(Keyring::from_file(&raw).unwrap().current_key_id(), key.id());
    let text = dir.join("text.key");
    std::fs::write(&text, format!("{}\n", &*b64)).unwrap();
    assert_eq!(EncryptionKey::from_file(&text).unwrap().id(), key.id());
    assert_eq!(
        Keyring::from_file(&text).unwrap().current_key_id(),
        key.id()
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let a = EncryptionKey::generate().unwrap();
    let b = EncryptionKey::generate().unwrap();
    assert_ne!(a.id(), b.id());
}

#[test]
fn constructor_errors_name_the_problem_without_the_material() {
    let secretish = "c2VjcmV0LWtleS1tYXRlcmlhbA"; // 19 bytes
    let cases: Vec<(KeyError, &str)> = vec![
        (EncryptionKey::from_slice(&[1; 31]).unwrap_err(), "31 bytes"),
        (
            EncryptionKey::from_base64(secretish).unwrap_err(),
            "19 bytes",
        ),
        (
            EncryptionKey::from_base64("not*base64!secret-material").unwrap_err(),
            "not valid base64",
        ),
        (EncryptionKey::from_base64("  ").unwrap_err(), "empty"),
        (Keyring::from_base64_list(" , ").unwrap_err(), "empty"),
        (
            EncryptionKey::from_env("TOKEN_CORE_ENVELOPE_TEST_NO_SUCH_VAR").unwrap_err(),
            "TOKEN_CORE_ENVELOPE_TEST_NO_SUCH_VAR is not set",
        ),
        (
            Keyring::from_file("/nonexistent/token-cache/key").unwrap_err(),
            "cannot read the key file /nonexistent/token-cache/key",
        ),
    ];
    for (err, expected) in cases {
        let text = format!("{err} / {err:?}");
        assert!(text.contains(expected), "{text}");
        for material in [secretish, "secret-material", "c2VjcmV0"] {
            assert!(!text.contains(material), "{text}");
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "token-core-envelope-{:x}",
        crate::rng::random_u128()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("bin.key");
    std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let err = EncryptionKey::from_file(&bin).unwrap_err().to_string();
    assert!(err.contains("4 bytes of binary data"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn debug_never_shows_key_material() {
    let key = key_n(0xab);
    let b64 = key.to_base64();
    let ring = Keyring::new(key_n(0xab))
        .with_previous(key_n(0xcd))
        .unwrap();
    for text in [
        format!("{key:?}"),
        format!("{ring:?}"),
        format!("{:#?}", ring),
    ] {
        assert!(!text.contains(&*b64), "{text}");
        assert!(!text.to_lowercase().contains("abababab"), "{text}");
        assert!(!text.contains("171, 171"), "{text}");
        assert!(!text.contains("cdcdcdcd"), "{text}");
    }
    assert_eq!(
        format!("{ring:?}"),
        format!(
            "Keyring {{ current: KeyId({}), previous: [KeyId({})] }}",
            key.id(),
            key_n(0xcd).id()
        )
    );
    assert!(format!("{key:?}").contains("\"***\""));
}
