//! The files of `deploy/`, checked by the tools that will read them: promtool for the alert
//! rules (syntax and their unit tests) and the scrape configuration, a YAML parser for the
//! Kubernetes manifests. Needs Debian's `prometheus` package (promtool); `cargo xtask test`
//! installs it. Without promtool these tests fail under `cargo xtask test`
//! (`PROBE_REQUIRE_INTEGRATION=1`) and are skipped, loudly, otherwise.
// The test runner reads what the tests say on stderr (it is no terminal that can go away).
#![allow(clippy::disallowed_macros)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// Runs promtool with `args` in `dir`; its output. `None` when promtool is missing and not
/// required.
fn promtool(dir: &Path, args: &[&str]) -> Option<String> {
    let output = match Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            let required = std::env::var("PROBE_REQUIRE_INTEGRATION").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "promtool is missing ({error}): apt-get install prometheus"
            );
            eprintln!("!! SKIPPED: promtool is missing ({error}); apt-get install prometheus");
            return None;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    Some(text)
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let dir = deploy("");
    if let Some(checked) = promtool(&dir, &["check", "rules", "alerts.yaml"]) {
        assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    }
    if let Some(tested) = promtool(&dir, &["test", "rules", "alerts.test.yaml"]) {
        assert!(tested.contains("SUCCESS"), "{tested}");
    }
}

#[test]
fn every_alert_has_a_test_that_fires_it_and_a_runbook() {
    let rules: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(deploy("alerts.yaml")).unwrap()).unwrap();
    let tests = std::fs::read_to_string(deploy("alerts.test.yaml")).unwrap();
    let alerts = rules["groups"][0]["rules"].as_sequence().unwrap();
    assert!(alerts.len() >= 7);
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        assert!(
            tests.contains(&format!(
                "alertname: {name}\n        exp_alerts:\n          - "
            )),
            "{name} has no test where it fires"
        );
        let runbook = alert["annotations"]["runbook"].as_str().unwrap_or("");
        assert!(
            runbook.contains("probe") || runbook.contains("--"),
            "{name} has no runbook line naming what to run: {runbook:?}"
        );
    }
}

#[test]
fn the_scrape_configuration_is_valid() {
    // promtool checks that the CA and password files exist: give it some.
    let dir = std::env::temp_dir().join(format!("probe-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.crt"), "").unwrap();
    std::fs::write(dir.join("password"), "secret").unwrap();
    // Debian builds Prometheus without Kubernetes discovery: promtool checks the rest of the
    // job (TLS, basic auth, relabelling) with the discovery swapped for a static target.
    let kubernetes = "kubernetes_sd_configs:\n      - role: pod\n";
    let text = std::fs::read_to_string(deploy("prometheus-scrape.yaml")).unwrap();
    assert!(text.contains(kubernetes));
    let scrape = text
        .replace("/etc/prometheus/probe/", &format!("{}/", dir.display()))
        .replace(
            kubernetes,
            "static_configs:\n      - targets: ['node-a:9464']\n",
        );
    std::fs::write(dir.join("prometheus.yml"), scrape).unwrap();
    let checked = promtool(&dir, &["check", "config", "prometheus.yml"]);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(checked) = checked {
        assert!(checked.contains("SUCCESS"), "{checked}");
    }
}

#[test]
fn the_manifests_are_yaml_of_the_kinds_they_say() {
    for (file, kind) in [
        ("daemonset.yaml", "DaemonSet"),
        ("podmonitor.yaml", "PodMonitor"),
        ("web-config.yaml", "Secret"),
    ] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let manifest: yaml_serde::Value =
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(manifest["kind"].as_str(), Some(kind), "{file}");
    }
    // The Secret's web.yml is what --metrics-web-config reads: the keys it mounts beside it.
    let secret: yaml_serde::Value =
        yaml_serde::from_str(&std::fs::read_to_string(deploy("web-config.yaml")).unwrap()).unwrap();
    let web = secret["stringData"]["web.yml"].as_str().unwrap();
    let web: yaml_serde::Value = yaml_serde::from_str(web).unwrap();
    for key in ["cert_file", "key_file"] {
        let file = web["tls_server_config"][key].as_str().unwrap();
        assert!(
            secret["stringData"][file].is_string(),
            "web.yml's {key} {file} is not in the Secret"
        );
    }
    let daemonset = std::fs::read_to_string(deploy("daemonset.yaml")).unwrap();
    assert!(daemonset.contains("secretName: probe-web-config"));
    assert!(daemonset.contains("\"--metrics-web-config\", \"/etc/probe/web.yml\""));
}
