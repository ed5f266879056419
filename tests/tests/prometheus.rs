//! The alerts of `contrib/prometheus/alerts.yml`: valid, passing their promtool unit
//! tests, and working in a real Prometheus (Debian's) that scrapes a real nginx: a
//! `kill -9` of a worker raises the crash counter, and a reload that nginx gives up
//! fires the failed-reload alert.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, io};

use common::nginx::{free_port, serial, signal, start, Config};
use common::STEP_TIMEOUT;
use serde_json::Value;
use tempfile::TempDir;
use worker_manager::EventKind;

/// From Debian's `prometheus`, which `make deps` installs.
const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus")
}

/// Runs promtool in `contrib/prometheus`; fails with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new(PROMTOOL)
        .args(args)
        .current_dir(contrib())
        .output()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e} (`make deps` installs it)"));
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alerts_are_valid_rules_and_pass_their_unit_tests() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

/// A GET of `target` on a loopback port: the status code and the body. HTTP/1.0,
/// so that the body is neither chunked nor kept open.
fn http_get(port: u16, target: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// `text` as a URL query value.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A Prometheus server on a free loopback port with its storage in a temporary
/// directory, scraping one target and evaluating `alerts.yml` every second. Killed
/// and reaped when dropped, before its directory is removed.
struct Prometheus {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    fn scraping(target: u16) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("wm-prometheus-")
            .tempdir()
            .unwrap();
        // The rules as shipped, `for:` included: the alerts this test waits for
        // fire at their first evaluation.
        let config = format!(
            r#"
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: nginx
    static_configs:
      - targets: ["127.0.0.1:{target}"]
"#,
            rules = contrib().join("alerts.yml").display(),
        );
        fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let port = free_port();
        let mut command = Command::new(PROMETHEUS);
        command
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: the closure runs in the child between fork and exec, and calls
        // only prctl, which is async-signal-safe.
        unsafe {
            // Should this test process be killed outright (a timeout), Prometheus
            // goes with it rather than running on.
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{PROMETHEUS}: {e} (`make deps` installs it)"));
        let prometheus = Prometheus { child, port, dir };
        prometheus.wait_for("ready", || match http_get(port, "/-/ready") {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("{status} {body}")),
            Err(e) => Err(e.to_string()),
        });
        prometheus
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The `data` of a successful API answer.
    fn api(&self, target: &str) -> Value {
        let answer = http_get(self.port, target)
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).map_err(io::Error::from))
            .unwrap_or_else(|e| panic!("GET {target}: {e}; Prometheus's log:\n{}", self.log()));
        assert_eq!(answer["status"], "success", "GET {target}: {answer}");
        answer["data"].clone()
    }

    /// The value of `promql`, an expression of one series, now; `None` while it has
    /// no sample.
    fn value(&self, promql: &str) -> Option<f64> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encoded(promql)));
        let samples = data["result"].as_array().expect("a vector");
        assert!(samples.len() <= 1, "{promql} is not one series: {data}");
        samples
            .first()
            .map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
    }

    /// The alert named `name`, if it is firing.
    fn firing(&self, name: &str) -> Option<Value> {
        let data = self.api("/api/v1/alerts");
        let alerts = data["alerts"].as_array().expect("a list of alerts");
        alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .cloned()
    }

    /// Polls `probe` until it holds (`Ok`), for `STEP_TIMEOUT`; it says what it sees
    /// otherwise (`Err`).
    fn wait_for<T>(&self, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match probe() {
                Ok(done) => return done,
                Err(seen) => assert!(
                    Instant::now() < deadline,
                    "Prometheus never showed {what} in {STEP_TIMEOUT:?}: {seen}\nits log:\n{}",
                    self.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `promql` has a sample for which `holds` is true.
    fn wait_value(&self, promql: &str, holds: impl Fn(f64) -> bool) {
        self.wait_for(promql, || match self.value(promql) {
            Some(v) if holds(v) => Ok(()),
            seen => Err(format!("{seen:?}")),
        })
    }

    /// Waits until the alert named `name` fires.
    fn wait_firing(&self, name: &str) -> Value {
        self.wait_for(&format!("{name} firing"), || {
            self.firing(name)
                .ok_or_else(|| self.api("/api/v1/alerts").to_string())
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_real_prometheus_counts_a_crash_and_fires_the_failed_reload_alert() {
    let _serial = serial();
    let mut config = Config::default();
    let (nginx, master) = start(&config);
    nginx.wait_n(EventKind::WorkerStart, 2);
    let prometheus = Prometheus::scraping(nginx.port);
    let scraped = |promql: &str| format!("{promql}{{job=\"nginx\"}}");

    // Scraped, before anything happened: a committed start, no crash.
    prometheus.wait_value(&scraped("up"), |up| up == 1.0);
    prometheus.wait_value(&scraped("worker_manager_last_reload_successful"), |v| {
        v == 1.0
    });
    let crashes = scraped("worker_manager_worker_crashes_total");
    assert_eq!(prometheus.value(&crashes), Some(0.0));

    let victim = nginx.workers(master)[0];
    signal(victim, libc::SIGKILL);
    nginx.wait_n(EventKind::WorkerCrash, 1);
    prometheus.wait_value(&format!("increase({crashes}[1m])"), |n| n > 0.0);
    assert_eq!(prometheus.value(&crashes), Some(1.0));
    prometheus.wait_firing("WorkerManagerWorkerCrashed");
    assert!(
        prometheus.firing("WorkerManagerReloadFailed").is_none(),
        "nothing failed yet"
    );

    // A reload whose configuration listens on a port that is taken: nginx gives it
    // up and serves on with the one before.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    config.http = format!(
        "server {{ listen 127.0.0.1:{}; }}",
        taken.local_addr().unwrap().port()
    );
    nginx.write_config(&config);
    signal(master, libc::SIGHUP);
    prometheus.wait_value(&scraped("worker_manager_last_reload_successful"), |v| {
        v == 0.0
    });
    let alert = prometheus.wait_firing("WorkerManagerReloadFailed");
    let instance = format!("127.0.0.1:{}", nginx.port);
    assert_eq!(alert["labels"]["instance"], instance.as_str(), "{alert}");
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    // The annotation's query of the verdict's time ran in this Prometheus too.
    let description = alert["annotations"]["description"].as_str().unwrap();
    assert!(
        description.starts_with("At ")
            && description.contains(&format!("nginx on {instance} (job nginx) gave up")),
        "{description}"
    );
    nginx.wait_status("live=2 ");

    signal(master, libc::SIGQUIT);
    nginx.wait_gone(master);
}
