//! End-to-end tests: the built `tokencache` binary, run as a user would,
//! against a token endpoint on loopback started by each test, in its own
//! temporary HOME / XDG directories.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use support::{json, ok, stderr, stdout, Idp, Sandbox, CLIENT_ID, SECRET, SECRET_ENV};

/// Neither the client secret nor any issued token appears in `text`.
fn no_secrets(idp: &Idp, text: &str) {
    assert!(!text.contains(SECRET), "the client secret leaked: {text}");
    for t in idp.tokens() {
        assert!(!text.contains(&t), "a token leaked: {text}");
    }
}

#[test]
fn second_get_is_served_from_the_cache() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let first = sb.get(&idp, &["--scope", "orders.read", "--format", "json"]);
    ok(&first);
    let second = sb.get(&idp, &["--scope", "orders.read", "--format", "json"]);
    ok(&second);
    assert_eq!(idp.calls(), 1, "the second get must not call the IdP");
    let (a, b) = (json(&first), json(&second));
    assert_eq!(a["from_cache"], false);
    assert_eq!(b["from_cache"], true);
    assert_eq!(a["access_token"], b["access_token"]);
    // The default format prints the token alone.
    let plain = sb.get(&idp, &["--scope", "orders.read"]);
    ok(&plain);
    assert_eq!(
        stdout(&plain).trim(),
        a["access_token"].as_str().unwrap_or("")
    );
    assert_eq!(idp.calls(), 1);
}

#[test]
fn json_output_has_every_field() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let out = sb.get(&idp, &["--format", "json"]);
    ok(&out);
    let v = json(&out);
    assert_eq!(v["access_token"], idp.tokens()[0].as_str());
    assert_eq!(v["token_type"], "Bearer");
    let expires_at = v["expires_at"].as_str().expect("expires_at is text");
    // RFC 3339, UTC: 2026-11-22T16:37:01Z
    assert_eq!(expires_at.len(), 20, "{expires_at}");
    assert_eq!(&expires_at[4..5], "-");
    assert_eq!(&expires_at[10..11], "T");
    assert!(expires_at.ends_with('Z'));
    let expires_in = v["expires_in"].as_u64().expect("expires_in is a number");
    assert!(expires_in > 0 && expires_in <= 3600, "{expires_in}");
    assert_eq!(v["from_cache"], false);
}

#[test]
fn header_format_is_an_authorization_value() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let out = sb.get(&idp, &["--format", "header"]);
    ok(&out);
    assert_eq!(stdout(&out).trim(), format!("Bearer {}", idp.tokens()[0]));
}

#[test]
fn client_secret_post_and_secret_file_work() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let file = sb.path().join("secret.txt");
    std::fs::write(&file, format!("{SECRET}\n")).expect("write secret");
    let url = idp.token_url();
    let out = sb
        .cmd()
        .args([
            "get",
            "--token-url",
            &url,
            "--client-id",
            CLIENT_ID,
            "--auth",
            "post",
        ])
        .arg("--client-secret-file")
        .arg(&file)
        .output()
        .expect("run");
    ok(&out);
    assert_eq!(idp.calls(), 1);
}

#[test]
fn secrets_are_not_accepted_as_arguments() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args([
            "get",
            "--token-url",
            "http://127.0.0.1:1/token",
            "--client-id",
            "c",
        ])
        .args(["--client-secret", SECRET])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn profile_file_supplies_settings_and_flags_override_them() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let config = sb.config_file();
    std::fs::create_dir_all(config.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &config,
        format!(
            "[profiles.orders]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
             client_secret_env = \"{SECRET_ENV}\"\nscopes = [\"orders.read\", \"orders.write\"]\n\
             format = \"json\"\n",
            idp.token_url()
        ),
    )
    .expect("write profile");
    let out = sb
        .cmd()
        .args(["get", "--profile", "orders"])
        .output()
        .expect("run");
    ok(&out);
    assert_eq!(
        json(&out)["from_cache"],
        false,
        "the profile's format is json"
    );
    assert_eq!(idp.scopes(), ["orders.read orders.write"]);

    // A flag overrides the profile's value.
    let out = sb
        .cmd()
        .args([
            "get",
            "--profile",
            "orders",
            "--scope",
            "billing.read",
            "--format",
            "token",
        ])
        .output()
        .expect("run");
    ok(&out);
    assert_eq!(idp.scopes(), ["orders.read orders.write", "billing.read"]);
    assert_eq!(stdout(&out).trim(), idp.tokens()[1]);

    // An unknown profile is a configuration error naming it.
    let out = sb
        .cmd()
        .args(["get", "--profile", "nope"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));
}

#[test]
fn wrong_secret_exits_4_naming_invalid_client() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let url = idp.token_url();
    let out = sb
        .cmd()
        .env(SECRET_ENV, "not-the-secret")
        .args(["get", "--token-url", &url, "--client-id", CLIENT_ID])
        .args(["--client-secret-env", SECRET_ENV])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(
        err.matches("invalid_client").count(),
        1,
        "the code once: {err}"
    );
    assert!(err.contains("401 Unauthorized"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one sentence: {err}");
    assert!(
        !err.contains("not-the-secret") && stdout(&out).is_empty(),
        "{err}"
    );
    no_secrets(&idp, &err);
}

#[test]
fn unreachable_idp_exits_5_naming_the_url() {
    let sb = Sandbox::new();
    let url = format!("http://127.0.0.1:{}/token", token_testkit::free_port());
    let out = sb
        .cmd()
        .args(["get", "--token-url", &url, "--client-id", CLIENT_ID])
        .args(["--client-secret-env", SECRET_ENV])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&url), "{err}");
    assert!(!err.contains(SECRET));
    // One short line, not a chain of every layer's wording.
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(errors[0].len() < 120, "{} chars: {err}", errors[0].len());
    assert!(errors[0].ends_with(": connection refused"), "{err}");
}

#[test]
fn missing_secret_variable_is_a_configuration_error() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let url = idp.token_url();
    let out = sb
        .cmd()
        .args(["get", "--token-url", &url, "--client-id", CLIENT_ID])
        .args(["--client-secret-env", "NO_SUCH_VARIABLE_HERE"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("NO_SUCH_VARIABLE_HERE"));
    assert_eq!(idp.calls(), 0);
}

#[test]
fn key_file_is_created_private_with_a_note() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let out = sb.get(&idp, &[]);
    ok(&out);
    let key = sb.key_file();
    assert!(
        stderr(&out).contains(&key.display().to_string()),
        "{}",
        stderr(&out)
    );
    let mode = std::fs::metadata(&key)
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The second run uses it silently.
    let out = sb.get(&idp, &[]);
    ok(&out);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

#[test]
fn missing_key_for_an_existing_store_exits_7() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &[]));
    std::fs::remove_file(sb.key_file()).expect("remove key");
    let out = sb.get(&idp, &[]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no encryption key"),
        "{}",
        stderr(&out)
    );
    assert!(
        !sb.key_file().exists(),
        "no new key may be made for an existing store"
    );
    no_secrets(&idp, &stderr(&out));
}

#[test]
fn wrong_key_exits_7_and_malformed_key_too() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let key_a = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let key_b = "HxwdHhscGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";
    let url = idp.token_url();
    let run = |key: &str| {
        sb.cmd()
            .env("TOKENCACHE_KEY", key)
            .args(["get", "--token-url", &url, "--client-id", CLIENT_ID])
            .args(["--client-secret-env", SECRET_ENV])
            .output()
            .expect("run")
    };
    ok(&run(key_a));
    let out = run(key_b);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong store key"), "{}", stderr(&out));
    let out = run("not base64!");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("TOKENCACHE_KEY"), "{}", stderr(&out));
    // The right key still works, from the cache.
    ok(&run(key_a));
    assert_eq!(idp.calls(), 1);
}

#[test]
fn a_corrupted_store_is_quarantined_and_tokens_are_fetched_again() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &[]));
    // Overwrite every file of the sled database with garbage.
    let sled = sb.store_dir().join("sled");
    let mut damaged = 0;
    for entry in walk(&sled) {
        let len = std::fs::metadata(&entry).map(|m| m.len()).unwrap_or(0) as usize;
        std::fs::write(&entry, vec![0xA5; len.max(64)]).expect("corrupt");
        damaged += 1;
    }
    assert!(damaged > 0, "no sled files found under {}", sled.display());
    // A token whose warm file is intact is still served from it without
    // opening sled (it is sealed with the store's key and still fresh).
    let out = sb.get(&idp, &["--format", "json"]);
    ok(&out);
    assert_eq!(json(&out)["from_cache"], true);
    // Anything that opens sled finds it damaged: it is moved aside with a
    // warning naming both paths, and the token is fetched into a fresh,
    // empty store.
    let out = sb.get(&idp, &["--scope", "other", "--format", "json"]);
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains("warning"), "{err}");
    assert!(err.contains("damaged"), "{err}");
    no_secrets(&idp, &err);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(json["from_cache"], false);
    assert_eq!(idp.calls(), 2);
    let aside: Vec<_> = std::fs::read_dir(sb.store_dir())
        .expect("store dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the damaged files are kept aside for inspection"
    );
    // And the fresh store serves the next call from the cache.
    let out = sb.get(&idp, &["--scope", "other", "--format", "json"]);
    ok(&out);
    assert_eq!(idp.calls(), 2);
}

#[test]
fn corrupted_index_is_reported_and_tokens_still_served() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &[]));
    std::fs::write(sb.store_dir().join("tokencache-index.json"), b"{not json").expect("corrupt");
    let out = sb.cmd().args(["inspect", "--json"]).output().expect("run");
    ok(&out);
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    // The store lists its keys itself: the entry is still shown, and purged.
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0]["client_id"]
        .as_str()
        .is_some_and(|c| c.contains("unknown")));
    let out = sb.get(&idp, &["--format", "json"]);
    ok(&out);
    assert_eq!(json(&out)["from_cache"], true);
    let out = sb.cmd().args(["purge", "--all"]).output().expect("run");
    ok(&out);
    assert!(stdout(&out).contains("removed 1"), "{}", stdout(&out));
    ok(&sb.get(&idp, &[]));
    assert_eq!(idp.calls(), 2);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn inspect_lists_entries_without_secrets_and_purge_removes_them() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &["--scope", "a.read"]));
    ok(&sb.get(&idp, &["--scope", "b.read", "--scope", "b.write"]));

    let out = sb.cmd().args(["inspect", "--json"]).output().expect("run");
    ok(&out);
    let text = stdout(&out);
    no_secrets(&idp, &text);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        assert_eq!(row["client_id"], CLIENT_ID);
        assert_eq!(row["state"], "fresh");
        assert!(row["expires_at"].as_str().is_some_and(|s| s.ends_with('Z')));
        assert!(row["refresh_at"].as_str().is_some());
        assert!(row["size"].as_u64().is_some_and(|n| n > 0));
        assert!(row["key"].as_str().is_some_and(|k| k.contains(CLIENT_ID)));
    }
    let scopes: Vec<String> = rows.iter().map(|r| r["scopes"].to_string()).collect();
    assert!(scopes.contains(&r#"["a.read"]"#.to_owned()), "{scopes:?}");
    assert!(
        scopes.contains(&r#"["b.read","b.write"]"#.to_owned()),
        "{scopes:?}"
    );

    // The table form also holds no secret.
    let table = sb.cmd().arg("inspect").output().expect("run");
    ok(&table);
    no_secrets(&idp, &stdout(&table));
    assert!(stdout(&table).contains("refresh_at"));

    // Purge one key: it is gone, the other stays.
    let key = rows
        .iter()
        .find(|r| r["scopes"] == serde_json::json!(["a.read"]))
        .and_then(|r| r["key"].as_str())
        .expect("key")
        .to_owned();
    ok(&sb.cmd().args(["purge", &key]).output().expect("run"));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(
        &sb.cmd().args(["inspect", "--json"]).output().expect("run"),
    ))
    .expect("json");
    assert_eq!(rows.len(), 1);
    // The purged one is fetched again; the other still comes from the cache.
    ok(&sb.get(&idp, &["--scope", "a.read"]));
    assert_eq!(idp.calls(), 3);
    ok(&sb.get(&idp, &["--scope", "b.read", "--scope", "b.write"]));
    assert_eq!(idp.calls(), 3);

    // Purge all.
    let out = sb.cmd().args(["purge", "--all"]).output().expect("run");
    ok(&out);
    assert!(stdout(&out).contains("removed 2"), "{}", stdout(&out));
    let out = sb.cmd().args(["inspect", "--json"]).output().expect("run");
    assert_eq!(stdout(&out).trim(), "[]");
    ok(&sb.get(&idp, &["--scope", "a.read"]));
    assert_eq!(idp.calls(), 4);
}

#[test]
fn purge_all_force_deletes_a_store_whose_key_is_lost() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &[]));
    std::fs::remove_file(sb.key_file()).expect("remove key");
    let out = sb
        .cmd()
        .args(["purge", "--all", "--force"])
        .output()
        .expect("run");
    ok(&out);
    assert!(!sb.store_dir().exists());
    // Starts afresh with a new key.
    ok(&sb.get(&idp, &[]));
    assert_eq!(idp.calls(), 2);
}

#[test]
fn a_token_in_its_refresh_window_is_refreshed() {
    // 8 s tokens: refresh due after about 4 s, usable until 6 s.
    let idp = Idp::start(8);
    let sb = Sandbox::new();
    let first = sb.get(&idp, &["--format", "json"]);
    ok(&first);
    std::thread::sleep(Duration::from_millis(4200));
    let second = sb.get(&idp, &["--format", "json"]);
    ok(&second);
    let (a, b) = (json(&first), json(&second));
    assert_ne!(
        a["access_token"], b["access_token"],
        "a refresh-due token is replaced"
    );
    assert_eq!(b["from_cache"], false);
    assert_eq!(idp.calls(), 2);
    // The refreshed token was stored: the next call is a hit.
    let third = sb.get(&idp, &["--format", "json"]);
    ok(&third);
    assert_eq!(json(&third)["access_token"], b["access_token"]);
    assert_eq!(idp.calls(), 2);
}

#[test]
fn issuer_discovery_finds_the_token_endpoint() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args(["get", "--issuer", &idp.base, "--client-id", CLIENT_ID])
        .args(["--client-secret-env", SECRET_ENV])
        .output()
        .expect("run");
    ok(&out);
    assert_eq!(stdout(&out).trim(), idp.tokens()[0]);
}

#[test]
fn memory_store_keeps_nothing_between_invocations() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &["--store", "memory"]));
    ok(&sb.get(&idp, &["--store", "memory"]));
    assert_eq!(idp.calls(), 2);
    assert!(!sb.key_file().exists(), "the memory store needs no key");
    let out = sb
        .cmd()
        .args(["inspect", "--store", "memory"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn sled_store_in_a_chosen_directory() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let dir = sb.path().join("elsewhere");
    let spec = format!("sled:{}", dir.display());
    ok(&sb.get(&idp, &["--store", &spec]));
    ok(&sb.get(&idp, &["--store", &spec]));
    assert_eq!(idp.calls(), 1);
    assert!(dir.join("sled").exists());
    assert!(!sb.store_dir().exists());
    let out = sb
        .cmd()
        .args(["inspect", "--json", "--store", &spec])
        .output()
        .expect("run");
    ok(&out);
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&stdout(&out))
            .map(|v| v.len())
            .ok(),
        Some(1)
    );
}

#[test]
fn help_documents_the_exit_codes() {
    let sb = Sandbox::new();
    let out = sb.cmd().args(["get", "--help"]).output().expect("run");
    ok(&out);
    let help = stdout(&out);
    for code in [
        "3  configuration",
        "4  the IdP refused",
        "5  the IdP could not be reached",
        "6  the token store",
        "7  the encryption key",
    ] {
        assert!(help.contains(code), "--help lacks `{code}`");
    }
}

#[test]
fn demo_runs_with_small_numbers() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args([
            "demo",
            "--callers",
            "8",
            "--requests",
            "2000",
            "--keys",
            "2",
            "--lifetime",
            "2",
        ])
        .output()
        .expect("run");
    ok(&out);
    let text = stdout(&out);
    for row in [
        "requests served",
        "IdP calls (counted by the IdP)",
        "IdP calls without a cache",
        "reduction",
        "hit ratio",
        "get_token latency p50",
        "get_token latency p99",
        "stale tokens served",
        "errors",
    ] {
        assert!(text.contains(row), "summary lacks `{row}`:\n{text}");
    }
    assert!(text.contains("expired tokens handed out       0"), "{text}");
    assert!(text.contains("2,000"), "{text}");
}

#[test]
fn demo_on_sled_runs() {
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .args([
            "demo",
            "--callers",
            "4",
            "--requests",
            "500",
            "--store",
            "sled",
        ])
        .output()
        .expect("run");
    ok(&out);
    assert!(stdout(&out).contains("sled"));
}

#[test]
fn a_wrong_secret_misses_the_cache_and_is_refused_by_the_idp() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &["--scope", "orders.read"]));
    assert_eq!(idp.calls(), 1);
    let url = idp.token_url();
    let wrong = sb
        .cmd()
        .env("WRONG", "not-the-secret")
        .args(["get", "--token-url", &url, "--client-id", CLIENT_ID])
        .args(["--client-secret-env", "WRONG", "--scope", "orders.read"])
        .args(["--format", "json"])
        .output()
        .expect("run");
    assert_eq!(
        idp.calls(),
        2,
        "a wrong secret must go to the IdP, not the cache"
    );
    assert_eq!(wrong.status.code(), Some(4), "{}", stderr(&wrong));
    assert!(
        stdout(&wrong).is_empty(),
        "no token printed: {}",
        stdout(&wrong)
    );
    // The right secret still hits.
    let again = sb.get(&idp, &["--scope", "orders.read", "--format", "json"]);
    ok(&again);
    assert_eq!(json(&again)["from_cache"], true);
    assert_eq!(idp.calls(), 2);
    // The index shows the fingerprint at most, never the secret.
    let out = sb.cmd().args(["inspect", "--json"]).output().expect("run");
    ok(&out);
    no_secrets(&idp, &stdout(&out));
}

#[test]
fn the_same_secret_from_a_file_or_the_environment_shares_the_entry() {
    // The fingerprint is of the secret's value, not of where it came from.
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let file = sb.path().join("secret.txt");
    std::fs::write(&file, SECRET).expect("write secret");
    ok(&sb.get(&idp, &[]));
    let url = idp.token_url();
    // The same secret from a file: the same fingerprint, so a hit.
    let out = sb
        .cmd()
        .args(["get", "--token-url", &url, "--client-id", CLIENT_ID])
        .arg("--client-secret-file")
        .arg(&file)
        .output()
        .expect("run");
    ok(&out);
    assert_eq!(idp.calls(), 1, "the same secret from another source hits");
}

#[test]
fn trace_logging_shows_decisions_and_no_secret() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let url = idp.token_url();
    let run = || {
        sb.cmd()
            .env("RUST_LOG", "trace")
            .args(["get", "--token-url", &url, "--client-id", CLIENT_ID])
            .args(["--client-secret-env", SECRET_ENV])
            .output()
            .expect("run")
    };
    let first = run();
    ok(&first);
    let second = run();
    ok(&second);
    let (a, b) = (stderr(&first), stderr(&second));
    assert!(a.contains("store: sled"), "{a}");
    assert!(a.contains("fetched from the IdP"), "{a}");
    assert!(a.contains("TRACE") || a.contains("DEBUG"), "{a}");
    assert!(b.contains("served from the cache"), "{b}");
    let basic = base64_basic();
    for text in [&a, &b] {
        no_secrets(&idp, text);
        assert!(
            !text.contains(&basic),
            "the Basic credentials leaked: {text}"
        );
    }
    // -v alone: info lines, still no secret.
    let out = sb.get(&idp, &["-v"]);
    ok(&out);
    let err = stderr(&out);
    assert!(err.contains("served from the cache"), "{err}");
    no_secrets(&idp, &err);
    // Without either, nothing but the token.
    let out = sb.get(&idp, &[]);
    ok(&out);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}

/// `base64(client_id:secret)`, as the Basic header carries it.
fn base64_basic() -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("base64(1)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{CLIENT_ID}:{SECRET}").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("base64");
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn a_cached_issuer_get_makes_no_request_at_all() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let run = || {
        sb.cmd()
            .args(["get", "--issuer", &idp.base, "--client-id", CLIENT_ID])
            .args(["--client-secret-env", SECRET_ENV, "--format", "json"])
            .output()
            .expect("run")
    };
    let first = run();
    ok(&first);
    let after_first = idp.requests();
    assert_eq!(after_first, 2, "one discovery and one token request");
    let second = run();
    ok(&second);
    assert_eq!(json(&second)["from_cache"], true);
    assert_eq!(
        idp.requests(),
        after_first,
        "a cached get with --issuer makes no request"
    );
}

#[test]
fn usage_errors_exit_2() {
    let sb = Sandbox::new();
    let out = sb.cmd().arg("get").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--token-url"), "{}", stderr(&out));
    let out = sb.cmd().arg("purge").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: "), "{}", stderr(&out));
}

#[test]
fn purging_an_entry_that_is_not_cached_succeeds_with_a_note() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &[]));
    let out = sb
        .cmd()
        .args(["purge", "tc1|no-such-key", "abcdef"])
        .output()
        .expect("run");
    ok(&out);
    assert!(stderr(&out).starts_with("note: "), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("removed 0 entries"),
        "{}",
        stdout(&out)
    );
    // The cached entry is untouched.
    ok(&sb.get(&idp, &[]));
    assert_eq!(idp.calls(), 1);
}

#[test]
fn a_token_url_answering_404_html_is_a_configuration_error() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    let url = format!("{}/wrong/path", idp.base);
    let out = sb
        .cmd()
        .args(["get", "--token-url", &url, "--client-id", CLIENT_ID])
        .args(["--client-secret-env", SECRET_ENV])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("is not a token endpoint"), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(!err.contains("refused"), "{err}");
}

#[test]
fn inspect_prints_a_short_id_that_purge_accepts() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &["--scope", "a.read"]));
    ok(&sb.get(&idp, &["--scope", "b.read"]));
    let out = sb.cmd().args(["inspect", "--json"]).output().expect("run");
    ok(&out);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).expect("json");
    let id = rows
        .iter()
        .find(|r| r["scopes"] == serde_json::json!(["a.read"]))
        .and_then(|r| r["id"].as_str())
        .expect("id")
        .to_owned();
    assert_eq!(id.len(), 12, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    let table = sb.cmd().arg("inspect").output().expect("run");
    assert!(
        stdout(&table).lines().any(|l| l == id),
        "{}",
        stdout(&table)
    );
    let out = sb.cmd().args(["purge", &id]).output().expect("run");
    ok(&out);
    assert_eq!(stdout(&out).trim(), "removed 1 entry");
    ok(&sb.get(&idp, &["--scope", "a.read"]));
    ok(&sb.get(&idp, &["--scope", "b.read"]));
    assert_eq!(idp.calls(), 3, "only the purged entry is fetched again");
}

#[test]
fn a_warm_get_does_not_open_the_sled_store() {
    let idp = Idp::start(3600);
    let sb = Sandbox::new();
    ok(&sb.get(&idp, &["--format", "json"]));
    // Another process holds the store's lock, as a long `get` or `inspect`
    // would: opening sled would wait for it and then fail (exit 6).
    let lock = sb.store_dir().join("token-sled.lock");
    let mut holder = std::process::Command::new("flock")
        .arg("-x")
        .arg(&lock)
        .args(["-c", "echo locked; exec sleep 60"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock(1) from util-linux");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("lock taken");
    assert_eq!(line.trim(), "locked");
    let warm = sb.get(&idp, &["--format", "json"]);
    let _ = holder.kill();
    let _ = holder.wait();
    ok(&warm);
    assert_eq!(json(&warm)["from_cache"], true);
    assert_eq!(idp.calls(), 1);
}
