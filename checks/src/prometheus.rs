//! A real Prometheus for the checks: `deploy/prometheus/prometheus.yml` as shipped, with its
//! targets replaced and a short scrape interval, in a private data directory on a private
//! port; and a minimal HTTP/1.0 client for its query API.

use crate::root;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use yaml_serde::Value;

pub fn dir() -> PathBuf {
    root().join("deploy/prometheus")
}

pub struct Prometheus {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `work` scraping `targets` (job name -> `host:port`s) every second.
    pub fn start(work: &Path, port: u16, targets: &[(&str, Vec<String>)]) -> Prometheus {
        Prometheus::start_config("prometheus.yml", work, port, targets)
    }

    /// [`Prometheus::start`] with another config of deploy/prometheus/ (`prometheus.tls.yml`).
    pub fn start_config(
        config: &str,
        work: &Path,
        port: u16,
        targets: &[(&str, Vec<String>)],
    ) -> Prometheus {
        let text = std::fs::read_to_string(dir().join(config)).unwrap();
        let mut cfg: Value = yaml_serde::from_str(&text).expect(config);
        cfg["global"]["scrape_interval"] = "1s".into();
        cfg["global"]["evaluation_interval"] = "1s".into();
        let rules = dir().join("alerts.yml").display().to_string();
        cfg["rule_files"] = Value::Sequence(vec![rules.into()]);
        let jobs = cfg["scrape_configs"]
            .as_sequence_mut()
            .expect("scrape_configs");
        for (job, addrs) in targets {
            let j = jobs
                .iter_mut()
                .find(|j| j["job_name"].as_str() == Some(job))
                .unwrap_or_else(|| panic!("{config} has no job {job}"));
            let list = addrs.iter().map(|a| Value::from(a.as_str())).collect();
            let mut sc = yaml_serde::Mapping::new();
            sc.insert("targets".into(), Value::Sequence(list));
            j["static_configs"] = Value::Sequence(vec![Value::Mapping(sc)]);
        }
        let file = work.join("prometheus.yml");
        std::fs::write(&file, yaml_serde::to_string(&cfg).unwrap()).unwrap();
        let log = work.join("prometheus.log");
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").map(|(s, _)| s) != Ok(200) {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready: {}",
                p.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    pub fn log_tail(&self) -> String {
        chat_testkit::log_tail(&self.log, 20)
    }

    /// `GET path` (HTTP/1.0: no chunked body); (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        let mut s = TcpStream::connect(&self.addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr)
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or("not HTTP")?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Ok((status, body.to_string()))
    }

    /// An instant query: the JSON `data.result`.
    pub fn query(&self, expr: &str) -> Result<serde_json::Value, String> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(expr)))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"]["result"].clone())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether a query result has at least one sample with a finite value.
pub fn has_finite_sample(result: &serde_json::Value) -> bool {
    result.as_array().is_some_and(|series| {
        series.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        })
    })
}

/// Every `(panel title, query)` of a Grafana dashboard, rows' nested panels included, with
/// `$__rate_interval` as `rate_interval`.
pub fn dashboard_queries(
    dashboard: &serde_json::Value,
    rate_interval: &str,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = stack.pop() {
        stack.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("a target with expr");
            let title = format!("{} / {}", p["title"].as_str().unwrap_or(""), t["refId"]);
            out.push((title, expr.replace("$__rate_interval", rate_interval)));
        }
    }
    out.reverse();
    out
}
