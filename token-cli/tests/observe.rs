//! What an operator sees of `tokencache serve` (issue 24, items 4 and 5):
//! the `/metrics` families (HELP and TYPE on each, histograms with the
//! OpenTelemetry HTTP buckets, no label derived from a secret), the access
//! log, and `--log-format json` making every line of stdout and stderr
//! JSON. The built binary, the recording upstream of token-testkit, reqwest
//! as the client, and the controllable token endpoint of the serve tests.

mod sidecar;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidecar::{fake_profile, free_addr, route, start_serve, upstream, write_config, FakeIdp};
use support::Sandbox;

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Lines read from `r` on a thread, as they come.
fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            out.lock().expect("lock").push(line);
        }
    });
    lines
}

/// Waits (up to 20 s) until one of `lines` holds `needle`.
async fn wait_for_line(lines: &Arc<Mutex<Vec<String>>>, needle: &str) {
    for _ in 0..400 {
        if lines
            .lock()
            .expect("lock")
            .iter()
            .any(|l| l.contains(needle))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no line with {needle:?} in:\n{}",
        lines.lock().expect("lock").join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_makes_every_stdout_and_stderr_line_json_through_requests_reload_and_shutdown(
) {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    let listen = free_addr();
    let text = format!(
        "{}\n[serve]\nlisten = \"{listen}\"\n{}",
        fake_profile("orders", &idp, "memory"),
        route("/orders/", &upstream, "orders")
    );
    let config = write_config(&sandbox, &text);
    let mut child = sandbox
        .cmd()
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tokencache serve");
    let pid = child.id();
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    wait_for_line(&out, "listening on").await;
    let base = out
        .lock()
        .expect("lock")
        .iter()
        .find_map(|l| sidecar::listening_address(l))
        .expect("the listening line names the address");
    assert!(sidecar::wait_ready(&base), "serve became ready");

    // Requests: through the route (with a query string that must not be
    // logged), a token endpoint refusal, a path nobody serves.
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{base}/orders/items?api_key=query-secret-value"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/v1/token?profile=orders"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400, "no Metadata header");
    let r = client
        .get(format!("{base}/nowhere"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 404);

    // A reload (a second route), then shutdown.
    let tmp = config.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!("{text}{}", route("/more/", &upstream, "orders")),
    )
    .expect("write");
    std::fs::rename(&tmp, &config).expect("rename");
    signal(pid, "-HUP");
    wait_for_line(&err, "configuration reloaded").await;
    let r = client
        .post(format!("{base}/more/x"))
        .body("b")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    signal(pid, "-TERM");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    // The readers drain the pipes once the process is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let out = out.lock().expect("lock").clone();
    let err = err.lock().expect("lock").clone();
    assert!(!out.is_empty() && err.len() >= 4, "{out:?}\n{err:?}");
    let mut parsed = Vec::new();
    for (stream, line) in out
        .iter()
        .map(|l| ("stdout", l))
        .chain(err.iter().map(|l| ("stderr", l)))
    {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a {stream} line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{stream}: {line}"
        );
        parsed.push(v);
    }
    let all = format!("{}\n{}", out.join("\n"), err.join("\n"));
    for secret in [
        "tok-1",
        support::SECRET,
        "query-secret-value",
        "api_key",
        "Bearer",
    ] {
        assert!(!all.contains(secret), "{secret} in the log:\n{all}");
    }
    // No Rust `Debug` text of a list or a duration in a field.
    for v in &parsed {
        for (k, f) in v["fields"].as_object().expect("fields") {
            let s = f.as_str().unwrap_or_default();
            assert!(
                !(s.starts_with("[\"") || s.ends_with("s }") || s.starts_with("Some(")),
                "field {k} holds Debug text: {v}"
            );
        }
    }

    // One access-log line per gateway request; none for the endpoints.
    let access: Vec<&serde_json::Value> = parsed
        .iter()
        .filter(|v| v["target"] == "tokencache::access")
        .collect();
    assert_eq!(access.len(), 2, "{access:#?}");
    let first = &access[0]["fields"];
    assert_eq!(first["route"], "/orders/");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["status"], 200);
    assert_eq!(first["upstream"], upstream.addr().to_string());
    assert!(first["duration_seconds"].as_f64().expect("duration") > 0.0);
    let key_id = first["key_id"].as_str().expect("key id");
    assert!(
        key_id.len() == 12 && key_id.chars().all(|c| c.is_ascii_hexdigit()),
        "{key_id}"
    );
    let second = &access[1]["fields"];
    assert_eq!(second["route"], "/more/");
    assert_eq!(second["method"], "POST");
    assert_eq!(second["key_id"], key_id, "the same profile, the same key");
    let _ = idp;
}

/// One `/metrics` text parsed: `# HELP`/`# TYPE` per family, and each
/// sample's name and labels.
struct Exposition {
    help: BTreeSet<String>,
    types: BTreeMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, String)>,
}

fn parse(text: &str) -> Exposition {
    let mut e = Exposition {
        help: BTreeSet::new(),
        types: BTreeMap::new(),
        samples: Vec::new(),
    };
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP text");
            assert!(!help.trim().is_empty(), "empty HELP: {line}");
            e.help.insert(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE");
            e.types.insert(name.to_owned(), ty.to_owned());
        } else if line.starts_with('#') {
            continue;
        } else {
            let (series, value) = line.rsplit_once(' ').expect("a sample");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut map = BTreeMap::new();
            // Label values here hold no `",`.
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').expect("label");
                map.insert(k.to_owned(), v.trim_matches('"').to_owned());
            }
            e.samples.push((name.to_owned(), map, value.to_owned()));
        }
    }
    e
}

/// The family a sample belongs to (`x_bucket` is of histogram `x`).
fn family<'a>(e: &Exposition, sample: &'a str) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix) {
            if e.types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    sample
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_help_and_type_on_every_family_histograms_in_otel_buckets_and_no_secret_derived_label(
) {
    let idp = FakeIdp::start(600).await;
    let upstream = upstream().await;
    let sandbox = Sandbox::new();
    // A route to a port nobody listens on: 502, counted as unavailable.
    let dead = free_addr();
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}[[serve.routes]]\nprefix = \"/down/\"\nupstream = \"http://{dead}\"\nprofile = \"orders\"\n",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let serve = start_serve(&sandbox, &config);
    let client = reqwest::Client::new();
    let base = &serve.base;
    for _ in 0..3 {
        let r = client
            .get(format!("{base}/orders/x?q=1"))
            .send()
            .await
            .expect("r");
        assert_eq!(r.status(), 200);
    }
    let r = client
        .delete(format!("{base}/orders/x"))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/down/x"))
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 502);
    let r = client
        .get(format!("{base}/v1/token?profile=orders"))
        .header("metadata", "true")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("{base}/v1/token?profile=nosuch"))
        .header("metadata", "true")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 404);
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("r")
            .status(),
        200
    );
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("r")
        .text()
        .await
        .expect("t");
    let e = parse(&text);

    // Every family: HELP and TYPE. No summary is left.
    for (name, _, _) in &e.samples {
        let f = family(&e, name);
        assert!(e.help.contains(f), "no HELP for {f}:\n{text}");
        assert!(e.types.contains_key(f), "no TYPE for {f}:\n{text}");
    }
    assert!(!e.types.values().any(|t| t == "summary"), "{text}");

    // No label value looks like a fingerprint, a credential id or a cache
    // key, and no raw path or query is a label.
    let hexish = |v: &str| v.len() >= 12 && v.chars().all(|c| c.is_ascii_hexdigit());
    for (name, labels, _) in &e.samples {
        for (k, v) in labels {
            assert!(
                !hexish(v) && !v.contains('|') && !v.contains('?') && v != "/orders/x",
                "{name}{{{k}={v:?}}} looks secret-derived or raw"
            );
            assert!(
                !["credential", "fingerprint", "key", "path"].contains(&k.as_str()),
                "{name} has label {k}"
            );
        }
    }
    assert!(!text.contains("tok-1") && !text.contains(support::SECRET));

    let has = |name: &str, want: &[(&str, &str)]| {
        e.samples.iter().any(|(n, l, _)| {
            n == name && want.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
        })
    };
    let value = |name: &str, want: &[(&str, &str)]| -> f64 {
        e.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == want.len()
                    && want.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .unwrap_or_else(|| panic!("no {name} {want:?} in:\n{text}"))
            .2
            .parse()
            .expect("number")
    };
    // The IdP histogram, by profile, in the OpenTelemetry buckets.
    assert_eq!(
        e.types["tokencache_idp_request_duration_seconds"],
        "histogram"
    );
    let buckets: Vec<String> = e
        .samples
        .iter()
        .filter(|(n, l, _)| {
            n == "tokencache_idp_request_duration_seconds_bucket"
                && l.get("profile").is_some_and(|p| p == "orders")
                && l.get("outcome").is_some_and(|o| o == "ok")
        })
        .map(|(_, l, _)| l["le"].clone())
        .collect();
    assert_eq!(
        buckets,
        [
            "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.25", "0.5", "0.75", "1", "2.5",
            "5", "7.5", "10", "+Inf"
        ]
    );
    assert_eq!(
        value(
            "tokencache_idp_request_duration_seconds_count",
            &[("profile", "orders"), ("outcome", "ok")]
        ),
        1.0
    );
    // The gateway histogram by route, method and status class.
    assert_eq!(
        value(
            "tokencache_gateway_request_duration_seconds_count",
            &[
                ("route", "/orders/"),
                ("method", "GET"),
                ("status_class", "2xx")
            ]
        ),
        3.0
    );
    assert_eq!(
        value(
            "tokencache_gateway_request_duration_seconds_count",
            &[
                ("route", "/orders/"),
                ("method", "DELETE"),
                ("status_class", "2xx")
            ]
        ),
        1.0
    );
    assert!(has(
        "tokencache_gateway_request_duration_seconds_bucket",
        &[
            ("route", "/down/"),
            ("status_class", "5xx"),
            ("le", "0.005")
        ]
    ));
    // Token endpoint counters by result; 503-class answers by cause.
    assert_eq!(
        value(
            "tokencache_endpoint_requests_total",
            &[("endpoint", "token"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tokencache_endpoint_requests_total",
            &[("endpoint", "token"), ("result", "bad_request")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tokencache_unavailable_total",
            &[("source", "/down/"), ("cause", "upstream_unreachable")]
        ),
        1.0
    );
    // Build, readiness, refresh margin, process.
    assert!(has(
        "tokencache_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))]
    ));
    assert_eq!(value("tokencache_ready", &[]), 1.0);
    let margin = value(
        "tokencache_token_refresh_margin_seconds",
        &[("profile", "orders")],
    );
    let remaining = value(
        "tokencache_token_remaining_seconds",
        &[("profile", "orders")],
    );
    assert!(
        margin > 0.0 && margin < remaining,
        "margin {margin}, remaining {remaining}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(name, &[]) > 0.0, "{name}");
    }
    assert!(e
        .types
        .get("process_cpu_seconds_total")
        .is_some_and(|t| t == "counter"));
    let _ = idp;
}

/// The venv `cargo xtask test` creates (xtask/src/venv.rs) with
/// opentelemetry-proto, or `None` after saying why (a failure under CI).
fn otlp_python() -> Option<std::path::PathBuf> {
    let python = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/vendor-venv/bin/python");
    let ok = python.exists()
        && Command::new(&python)
            .args([
                "-c",
                "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
            ])
            .status()
            .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    token_testkit::skip_or_fail(format!(
        "opentelemetry-proto is not installed in {}: run `cargo xtask test` (or `python3 -m venv \
         target/vendor-venv && target/vendor-venv/bin/pip install -r \
         token-cli/tests/vendor/requirements.txt`)",
        python.display()
    ))
}

/// `otlp_receiver.py`, killed when dropped.
struct Receiver(std::process::Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spans(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a span line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_receiver_and_continue_the_callers_traceparent_to_the_upstream() {
    let Some(python) = otlp_python() else { return };
    let sandbox = Sandbox::new();
    let out = sandbox.path().join("spans.jsonl");
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vendor/otlp_receiver.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(&out)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the OTLP receiver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let _receiver = Receiver(child);
    let port: u16 = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the receiver said {line:?}"));

    // Tokens of 4 s: keep-warm refreshes one while the test runs.
    let idp = FakeIdp::start(4).await;
    let upstream = upstream().await;
    let config = write_config(
        &sandbox,
        &format!(
            "{}\n[serve]\nlisten = \"{}\"\n{}",
            fake_profile("orders", &idp, "memory"),
            free_addr(),
            route("/orders/", &upstream, "orders")
        ),
    );
    let mut cmd = sandbox.cmd();
    cmd.env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{port}"),
    )
    .env("OTEL_SERVICE_NAME", "tokencache-under-test")
    .env("OTEL_BSP_SCHEDULE_DELAY", "100")
    .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    .env_remove("OTEL_SDK_DISABLED");
    let mut serve = sidecar::spawn_serve_cmd(cmd, &config, &[], Stdio::inherit());
    assert!(sidecar::wait_ready(&serve.base));

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let r = reqwest::Client::new()
        .get(format!("{}/orders/items?page=2", serve.base))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let seen = upstream.seen();
    let sent = seen
        .last()
        .and_then(|s| s.header("traceparent"))
        .expect("the upstream got a traceparent")
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(
        parts[1], trace_id,
        "the upstream continues the caller's trace"
    );
    assert_ne!(
        parts[2], caller_span,
        "the sidecar's span is the upstream's parent"
    );

    // A refresh within the token's lifetime; then shutdown flushes.
    let mut refreshed = false;
    for _ in 0..200 {
        if spans(&out)
            .iter()
            .any(|s| s["name"] == "tokencache.refresh")
        {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(serve.child.id(), "-TERM");
    let status = serve.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    let all = spans(&out);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(refreshed, "no tokencache.refresh span in:\n{text}");

    let forward = all
        .iter()
        .find(|s| s["name"] == "tokencache.forward")
        .unwrap_or_else(|| panic!("no forward span in:\n{text}"));
    assert_eq!(forward["service"], "tokencache-under-test");
    assert_eq!(forward["trace_id"], trace_id);
    assert_eq!(forward["parent_span_id"], caller_span);
    assert_eq!(
        forward["span_id"], parts[2],
        "the upstream's parent is the forward span"
    );
    assert_eq!(forward["kind"], 2, "SPAN_KIND_SERVER");
    let attrs = &forward["attributes"];
    assert_eq!(attrs["http.route"], "/orders/");
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["http.response.status_code"], "200");
    assert_eq!(attrs["server.address"], upstream.addr().to_string());
    let fetch = all
        .iter()
        .find(|s| s["name"] == "tokencache.fetch")
        .unwrap_or_else(|| panic!("no fetch span in:\n{text}"));
    assert_eq!(fetch["attributes"]["profile"], "orders");
    // The fetch of a refresh is a child of its refresh span.
    let refresh = all
        .iter()
        .find(|s| s["name"] == "tokencache.refresh")
        .expect("refresh");
    assert!(
        all.iter().any(|s| s["name"] == "tokencache.fetch"
            && s["parent_span_id"] == refresh["span_id"]
            && s["trace_id"] == refresh["trace_id"]),
        "{text}"
    );
    for secret in ["tok-", support::SECRET, "page=2", "Bearer"] {
        assert!(!text.contains(secret), "{secret} in the spans:\n{text}");
    }
}

#[test]
fn a_refused_start_under_json_log_format_says_why_in_one_json_line() {
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        "[profiles.orders]\ntoken_url = \"http://127.0.0.1:1/token\"\nclient_id = \"c\"\n\
         client_secret_env = \"NOT_SET_ANYWHERE\"\n\n[serve]\nlisten = \"127.0.0.1:0\"\n",
    );
    let out = sandbox
        .cmd()
        .env_remove("NOT_SET_ANYWHERE")
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "nothing on stderr");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["level"], "ERROR", "{line}");
        assert!(
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("NOT_SET_ANYWHERE")),
            "{line}"
        );
    }
    assert!(out.stdout.is_empty(), "{out:?}");
}

#[test]
fn check_config_under_json_log_format_answers_in_a_json_line() {
    let sandbox = Sandbox::new();
    let config = write_config(
        &sandbox,
        "[profiles.orders]\ntoken_url = \"http://127.0.0.1:1/token\"\nclient_id = \"c\"\n\
         client_secret_env = \"CLI_TEST_SECRET\"\n\n[serve]\nlisten = \"127.0.0.1:0\"\n",
    );
    let out = sandbox
        .cmd()
        .args([
            "serve",
            "--log-format",
            "json",
            "--check-config",
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("run serve");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert!(
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("valid (1 profiles, 0 routes)")),
        "{stdout}"
    );
}
