//! A real Prometheus (Debian's `prometheus` package), started for one test with its own
//! configuration, storage and port, and queried through its HTTP API with curl.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{TempPath, WAIT, ensure, free_port};

/// A running Prometheus, killed when dropped.
pub struct Prometheus {
    child: Child,
    /// Its configuration, rules and storage.
    dir: TempPath,
    /// `http://127.0.0.1:PORT`.
    url: String,
}

/// The directory holding the repository's `deploy/` files.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The project's alert rules with every `for:` shortened to `for` (a test cannot wait minutes).
pub fn rules_with_short_for(short: &str) -> Result<String, String> {
    let rules = std::fs::read_to_string(deploy_dir().join("alerts.yaml"))
        .map_err(|e| format!("cannot read deploy/alerts.yaml: {e}"))?;
    Ok(rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!(
                "{}for: {short}",
                &line[..line.len() - line.trim_start().len()]
            ),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

impl Prometheus {
    /// Starts Prometheus with `config` as prometheus.yml, `files` (name, content) beside it;
    /// returns once it is ready.
    pub fn start(name: &str, config: &str, files: &[(&str, &str)]) -> Result<Prometheus, String> {
        let dir = TempPath::directory(&format!("prometheus-{name}"))?;
        for (file, content) in files {
            std::fs::write(dir.0.join(file), content).map_err(|e| e.to_string())?;
        }
        let config_file = dir.0.join("prometheus.yml");
        std::fs::write(&config_file, config).map_err(|e| e.to_string())?;
        let port = free_port()?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("prometheus.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start prometheus (apt-get install prometheus): {e}"))?;
        let prometheus = Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        prometheus.wait_for("Prometheus to be ready", WAIT, || {
            Ok(prometheus.get("/-/ready", &[]).is_ok().then_some(()))
        })?;
        Ok(prometheus)
    }

    /// What Prometheus logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` with url-encoded `params`; the body.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<String, String> {
        let mut curl = Command::new("curl");
        curl.args(["-sSf", "--max-time", "10", "-G"])
            .arg(format!("{}{path}", self.url));
        for (key, value) in params {
            curl.arg("--data-urlencode").arg(format!("{key}={value}"));
        }
        let output = curl.output().map_err(|e| format!("cannot run curl: {e}"))?;
        ensure(output.status.success(), || {
            format!(
                "GET {path} {params:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        String::from_utf8(output.stdout).map_err(|e| e.to_string())
    }

    /// An API call's `data`.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let body = self.get(path, params)?;
        let value: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        ensure(value["status"] == "success", || {
            format!("{path} {params:?}: {value}")
        })?;
        Ok(value["data"].clone())
    }

    /// An instant query's result vector.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query that returns one sample, if it does.
    pub fn scalar(&self, expr: &str) -> Result<Option<f64>, String> {
        Ok(match self.query(expr)?.as_slice() {
            [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
            _ => None,
        })
    }

    /// The alerts, pending and firing.
    pub fn alerts(&self) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/alerts", &[])?;
        Ok(data["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// The active scrape targets.
    pub fn targets(&self) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/targets", &[])?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Polls `check` every 200 ms until it gives a value, for at most `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = check()? {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out waiting for {what}; Prometheus logged:\n{}",
                    self.log()
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
