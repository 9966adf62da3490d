//! The files of `deploy/` checked with the tools their users run:
//! the Kubernetes manifests against the Kubernetes JSON schemas
//! (`kubernetes-validate --strict`, offline), their settings (probes,
//! security context, the native sidecar) and embedded profiles files
//! (`tokencache serve --check-config`), the systemd unit with
//! `systemd-analyze verify` and `security`, the Prometheus rules with
//! `promtool check rules` and `promtool test rules`, and the Grafana
//! dashboard's queries with promtool's PromQL parser. And the Secret
//! volume the manifests rely on for rotation: a client secret swapped the
//! way the kubelet updates a mounted Secret is picked up by a running serve.
//!
//! The tools come from `cargo xtask test` (xtask/src/deploy.rs):
//! `target/deploy-venv` and `target/prometheus`. Without them a test skips
//! saying how to install them; under CI it fails.

mod sidecar;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use token_testkit::skip_or_fail;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(relative: &str) -> PathBuf {
    root().join("deploy").join(relative)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tool under `target/`, or `None` (a skip; a failure under CI).
fn tool(relative: &str) -> Option<PathBuf> {
    let path = root().join("target").join(relative);
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(format!(
        "{} is missing: run `cargo xtask test` once (or see xtask/src/deploy.rs) to install it",
        path.display()
    ))
}

fn kubernetes_validate() -> Option<PathBuf> {
    tool("deploy-venv/bin/kubernetes-validate")
}

fn promtool() -> Option<PathBuf> {
    tool("prometheus/usr/bin/promtool")
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn kubernetes_manifests_pass_the_schemas_strictly() {
    let Some(validate) = kubernetes_validate() else {
        return;
    };
    let files = manifests();
    assert!(files.len() >= 3, "{files:?}");
    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for kind in [
        "deployment/orders-api",
        "poddisruptionbudget/orders-api",
        "daemonset/tokencache",
        "service/tokencache",
        "networkpolicy/tokencache",
        "configmap/orders-api-tokencache",
        "secret/orders-api-idp",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind} ")),
            "{kind} not validated: {said}"
        );
    }

    // The validator rejects what the API server would: a misspelt field.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(deploy("kubernetes/deployment.yaml")).expect("read");
    std::fs::write(
        &bad,
        good.replacen(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            1,
        ),
    )
    .expect("write");
    let out = Command::new(&validate)
        .arg("--strict")
        .arg(&bad)
        .output()
        .expect("run kubernetes-validate");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("'readOnlyRootFileSystem' was unexpected"),
        "{}",
        text(&out)
    );
}

/// What the manifests must say beyond the schemas, asserted with PyYAML
/// (from the same venv): a native sidecar, probes on the admin port, a
/// restrictive security context, measured requests, secrets mounted so
/// that rotation reaches the file.
const MANIFEST_CHECKS: &str = r#"
import sys, yaml
docs = []
for f in sys.argv[1:]:
    docs += [d for d in yaml.safe_load_all(open(f)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)

def check_tokencache(c, pod, where):
    probes = {p: c[p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz", f"{where}: the livenessProbe must GET /healthz"
    assert probes["readinessProbe"]["path"] == "/readyz", f"{where}: the readinessProbe must GET /readyz"
    assert probes["startupProbe"]["path"] in ("/healthz", "/readyz"), f"{where}: the startupProbe must GET /healthz or /readyz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in probes.values():
        assert ports[p["port"]] == 8732, f"{where}: probes go to the admin port 8732, not {p}"
    sc = c["securityContext"]
    psc = pod.get("securityContext", {})
    assert sc["readOnlyRootFilesystem"] is True, f"{where}: readOnlyRootFilesystem"
    assert sc["allowPrivilegeEscalation"] is False, f"{where}: allowPrivilegeEscalation"
    assert sc["capabilities"]["drop"] == ["ALL"], f"{where}: drop ALL capabilities"
    assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
    seccomp = sc.get("seccompProfile", psc.get("seccompProfile"))
    assert seccomp["type"] == "RuntimeDefault", f"{where}: seccomp RuntimeDefault"
    req = c["resources"]["requests"]
    assert req["cpu"] and req["memory"] and c["resources"]["limits"]["memory"], f"{where}: CPU and memory requests, a memory limit"
    assert c["args"][:3] == ["serve", "--config", "/etc/tokencache/config.toml"], f"{where}: args {c['args']}"
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    assert env.get("TOKENCACHE_STATE_DIR") == "/var/lib/tokencache", f"{where}: TOKENCACHE_STATE_DIR"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path, kind in (("/etc/tokencache", "configMap"), ("/run/secrets/tokencache", "secret"),
                       ("/var/lib/tokencache", "emptyDir")):
        m = mounts[path]
        # A subPath mount never sees an update: no reload, no secret rotation.
        assert "subPath" not in m, f"{where}: {path} is a subPath mount, which never sees an update"
        assert kind in volumes[m["name"]], f"{where}: {path} must be a {kind} volume"
    assert pod["automountServiceAccountToken"] is False, f"{where}: automountServiceAccountToken: false"

[deployment] = by_kind["Deployment"]
pod = deployment["spec"]["template"]["spec"]
[sidecar] = [c for c in pod["initContainers"] if c["name"] == "tokencache"]
assert sidecar["restartPolicy"] == "Always", "a native sidecar is an init container with restartPolicy Always"
check_tokencache(sidecar, pod, "Deployment")

[daemonset] = by_kind["DaemonSet"]
pod = daemonset["spec"]["template"]["spec"]
[agent] = [c for c in pod["containers"] if c["name"] == "tokencache"]
check_tokencache(agent, pod, "DaemonSet")
[service] = by_kind["Service"]
assert service["spec"]["internalTrafficPolicy"] == "Local"

# Each embedded profiles file, for `tokencache serve --check-config`.
out = sys.stdin.readline().strip()
for cm in by_kind["ConfigMap"]:
    open(f"{out}/{cm['metadata']['name']}.toml", "w").write(cm["data"]["config.toml"])
print("checked", len(docs), "resources")
"#;

#[test]
fn kubernetes_manifests_run_a_hardened_probed_sidecar_with_a_valid_config() {
    let Some(validate) = kubernetes_validate() else {
        return;
    };
    let python = validate.with_file_name("python");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(MANIFEST_CHECKS)
        .args(manifests())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{}", dir.path().display()).expect("write");
    }
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "{}", text(&out));

    // The profiles files in the ConfigMaps are ones serve accepts, with the
    // secret files where the Secret volumes put them.
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).expect("mkdir");
    for name in ["client-secret", "serve-secret"] {
        std::fs::write(secrets.join(name), "example-secret\n").expect("write");
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let config = std::fs::read_to_string(&path)
            .expect("read")
            .replace("/run/secrets/tokencache", &secrets.display().to_string());
        std::fs::write(&path, &config).expect("write");
        let sandbox = support::Sandbox::new();
        let check = |p: &Path| {
            sandbox
                .cmd()
                .args(["serve", "--check-config", "--config"])
                .arg(p)
                .output()
                .expect("run tokencache")
        };
        let mut out = check(&path);
        if !out.status.success() && text(&out).contains("unknown field `admin_listen`") {
            // The admin listener is being added by a parallel change; until
            // then the rest of the file is still checked.
            eprintln!(
                "note: this build has no [serve] admin_listen yet; checking {} without it",
                path.display()
            );
            let without: String = config
                .lines()
                .filter(|l| !l.trim_start().starts_with("admin_listen"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(&path, without).expect("write");
            out = check(&path);
        }
        assert!(
            out.status.success(),
            "{} (from a ConfigMap in deploy/kubernetes) is refused: {}",
            path.display(),
            text(&out)
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "one profiles file per variant");
}

/// `systemd-analyze` verify of the unit, with `ExecStart` pointing at
/// `binary`: its complaints about the unit (an unknown directive, a bad
/// value, a missing binary are warnings it otherwise exits 0 on).
fn verify_unit(unit: &str, binary: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokencache.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tokencache", &binary.display().to_string()),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let complaints: Vec<String> = text(&out)
        .lines()
        .filter(|l| l.contains("tokencache"))
        .map(str::to_owned)
        .collect();
    if out.status.success() && complaints.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", out.status, complaints.join("\n")))
    }
}

fn systemd_analyze() -> Option<()> {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => Some(()),
        _ => skip_or_fail("systemd-analyze not found: install systemd (`apt-get install systemd`)"),
    }
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    if systemd_analyze().is_none() {
        return;
    }
    let unit = std::fs::read_to_string(deploy("systemd/tokencache.service")).expect("read");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tokencache"));
    verify_unit(&unit, &binary).expect("systemd-analyze verify");

    // The check sees what systemd would ignore with a warning.
    let typo = unit.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    let err = verify_unit(&typo, &binary).unwrap_err();
    assert!(err.contains("Unknown key 'NoNewPrivilege'"), "{err}");
    let err = verify_unit(&unit, Path::new("/nonexistent/tokencache")).unwrap_err();
    assert!(err.contains("not executable"), "{err}");

    for line in [
        "ExecStart=/usr/local/bin/tokencache serve --config /etc/tokencache/config.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "StateDirectory=tokencache",
        "Environment=TOKENCACHE_STATE_DIR=%S/tokencache",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
    ] {
        assert!(unit.contains(line), "the unit lacks {line:?}");
    }

    // systemd's own exposure score: 0 (locked down) .. 10 (unprotected);
    // the threshold is in tenths. The unit scores 1.4 with systemd 252.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokencache.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/tokencache", &binary.display().to_string()),
    )
    .expect("write");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze security");
    assert!(out.status.success(), "exposure above 2.0:\n{}", text(&out));
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else {
        return;
    };
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(deploy("prometheus/alerts.yml"))
        .output()
        .expect("promtool");
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new(&promtool)
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));

    // Every alert has a unit test.
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("read");
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).expect("read");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alerts_test.yml does not test {alert}"
        );
    }
}

/// The `expr` of every target of the dashboard, Grafana's variables
/// replaced by what they expand to.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/tokencache.json")).expect("read");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((
                panel["title"].as_str().expect("title").to_owned(),
                expr.replace("$__rate_interval", "5m")
                    .replace("$job", ".*")
                    .replace("$instance", ".*"),
            ));
        }
    }
    queries
}

#[test]
fn dashboard_queries_parse_as_promql() {
    let Some(promtool) = promtool() else {
        return;
    };
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    // promtool parses recording rules' expressions.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).expect("quote")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &rules).expect("write");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(out.status.success(), "{}\n{rules}", text(&out));

    // ... and a broken query would be caught.
    std::fs::write(
        &file,
        rules.replacen("sum by (profile)", "sum by (profile", 1),
    )
    .expect("write");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(!out.status.success(), "{}", text(&out));
}

/// `tokencache_*` and `process_*` names in `text`, a histogram's series
/// (`_bucket`, `_count`, `_sum`) under the histogram's name.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tokencache_") || w.starts_with("process_"))
        .map(|w| {
            let w = w.trim_end_matches("_bucket");
            let w = w.trim_end_matches("_count");
            w.trim_end_matches("_sum").to_owned()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_the_rules_and_dashboard_use_is_in_the_deploy_docs() {
    let docs = std::fs::read_to_string(root().join("docs/DEPLOY.md")).expect("docs/DEPLOY.md");
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("read");
    let dashboard: String = dashboard_queries()
        .into_iter()
        .map(|(_, e)| e + "\n")
        .collect();
    let used = metric_names(&format!("{rules}\n{dashboard}"));
    assert!(used.len() >= 15, "{used:?}");
    for name in &used {
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is used by deploy/ but not listed in docs/DEPLOY.md's metrics table"
        );
    }
    for needed in [
        "tokencache_idp_calls_total",
        "tokencache_token_lookups_total",
        "tokencache_token_remaining_seconds",
        "tokencache_token_refresh_margin_seconds",
        "tokencache_config_reloads_total",
        "tokencache_unavailable_total",
        "tokencache_ready",
    ] {
        assert!(
            used.iter().any(|u| u == needed),
            "neither the rules nor the dashboard use {needed}"
        );
    }
}

/// A Secret volume as the kubelet writes it: the file is a symlink through
/// `..data`, itself a symlink to a timestamped directory; an update writes
/// a new directory and renames a new `..data` over the old one (one atomic
/// step), then removes the old directory.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn create(dir: &Path, key: &str, value: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mut volume = Self {
            dir: dir.to_owned(),
            generation: 0,
        };
        volume.write(key, value);
        std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).expect("symlink");
        volume
    }

    fn write(&mut self, key: &str, value: &str) {
        let old = (self.generation > 0).then(|| self.generation_dir());
        self.generation += 1;
        let new = self.generation_dir();
        std::fs::create_dir(self.dir.join(&new)).expect("mkdir");
        let file = self.dir.join(&new).join(key);
        std::fs::write(&file, value).expect("write");
        // The kubelet's defaultMode; 0600 here, as no fsGroup applies.
        let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600);
        std::fs::set_permissions(&file, mode).expect("chmod");
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename");
        if let Some(old) = old {
            std::fs::remove_dir_all(self.dir.join(old)).expect("remove old generation");
        }
    }

    fn generation_dir(&self) -> String {
        format!("..2026_12_04_00_00_0{}.000000000", self.generation)
    }
}

/// The oidc-provider test endpoint that sets a rotating client's accepted
/// secrets.
async fn set_secrets(idp: &token_testkit::Idp, client: &str, secrets: &[&str]) {
    let r = reqwest::Client::new()
        .post(format!("{}/__test/client-secrets", idp.issuer()))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "client_id": client, "secrets": secrets }).to_string())
        .send()
        .await
        .expect("set secrets");
    assert!(r.status().is_success(), "{}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_the_way_the_kubelet_rotates_a_secret_volume_is_picked_up() {
    let Some(idp) = token_testkit::Idp::shared() else {
        return;
    };
    // 6-second tokens (server.js), so serve refreshes several times.
    let client_id = "rotating-short-deploy-volume";
    set_secrets(idp, client_id, &["old-secret-1"]).await;
    let sandbox = support::Sandbox::new();
    let secrets = sandbox.path().join("secrets");
    let mut volume = SecretVolume::create(&secrets, "client-secret", "old-secret-1\n");
    let config = sandbox.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[profiles.orders]\ntoken_url = \"{}\"\nclient_id = \"{client_id}\"\nclient_secret_file = \"{}\"\nscopes = [\"orders.read\"]\nstore = \"memory\"\n\n[serve]\nlisten = \"{}\"\n",
            idp.token_url(),
            secrets.join("client-secret").display(),
            sidecar::free_addr()
        ),
    )
    .expect("write");
    let serve = sidecar::start_serve_with(&sandbox, &config, &[], std::process::Stdio::inherit());
    let client = reqwest::Client::new();
    let token = || async {
        client
            .get(format!("{}/v1/token?profile=orders", serve.base))
            .header("metadata", "true")
            .send()
            .await
            .expect("token request")
            .status()
    };
    assert_eq!(token().await, 200);

    // The rotation: the IdP accepts both, the Secret is updated (the
    // kubelet's swap), then the IdP drops the old secret.
    set_secrets(idp, client_id, &["old-secret-1", "new-secret-2"]).await;
    volume.write("client-secret", "new-secret-2\n");
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_secrets(idp, client_id, &["new-secret-2"]).await;
    // Past the lifetime of any token obtained with the old secret, asking
    // for a token every half second.
    let until = std::time::Instant::now() + Duration::from_secs(13);
    let mut asked = 0;
    while std::time::Instant::now() < until {
        assert_eq!(
            token().await,
            200,
            "a token request failed after the rotation"
        );
        asked += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let uses: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!(
            "{}/__test/secret-uses?client_id={client_id}",
            idp.issuer()
        ))
        .await
        .expect("uses")
        .text()
        .await
        .expect("text"),
    )
    .expect("json");
    assert!(
        uses["uses"]["new-secret-2"].as_u64().unwrap_or(0) >= 1,
        "serve never used the rotated secret: {uses}"
    );
    assert_eq!(
        uses["refused"], 0,
        "a fetch used the revoked secret: {uses}"
    );
    assert!(asked > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_updated_the_way_the_kubelet_updates_it_is_reloaded() {
    let idp = sidecar::FakeIdp::start(600).await;
    let upstream = sidecar::upstream().await;
    let sandbox = support::Sandbox::new();
    let profiles = sidecar::fake_profile("orders", &idp, "memory");
    let serve_table = format!("[serve]\nlisten = \"{}\"\n", sidecar::free_addr());
    let before = format!(
        "{profiles}\n{serve_table}{}",
        sidecar::route("/orders/", &upstream, "orders")
    );
    let dir = sandbox.path().join("configmap");
    let mut volume = SecretVolume::create(&dir, "config.toml", &before);
    let serve = sidecar::start_serve_with(
        &sandbox,
        &dir.join("config.toml"),
        &[],
        std::process::Stdio::inherit(),
    );
    let get = |path: &'static str| {
        let base = serve.base.clone();
        async move {
            reqwest::get(format!("{base}{path}"))
                .await
                .expect("request")
                .status()
        }
    };
    assert_eq!(get("/orders/a").await, 200);
    assert_eq!(get("/billing/a").await, 404);

    // The ConfigMap gains a route.
    volume.write(
        "config.toml",
        &format!(
            "{before}{}",
            sidecar::route("/billing/", &upstream, "orders")
        ),
    );
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while get("/billing/a").await != 200 {
        assert!(
            std::time::Instant::now() < until,
            "serve did not reload the ConfigMap's new file within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get("/orders/a").await, 200);
}
