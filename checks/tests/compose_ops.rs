//! `docker-compose.yml`'s Prometheus and Grafana against `deploy/`: they mount the shipped
//! files where their commands and provisioning look, every scrape target of
//! `deploy/prometheus/prometheus.yml` is a compose service listening on that port, and
//! Grafana's data source is the compose Prometheus.
//!
//! `docker-compose.tls.yml` merged over `docker-compose.yml` (as `docker compose -f ... -f ...`
//! merges them, [`load_files`]): both nodes read a certificate and key from a read-only mount of
//! what `scripts/tls-cert.sh` writes, their health checks speak https, Prometheus scrapes them
//! with `scheme: https` (`deploy/prometheus/prometheus.tls.yml`), the ws://-only load generator
//! cannot start, and every flag and `CHAT_*` variable is one the binary's `--help` lists.

use chat_checks::compose::*;
use chat_checks::help::{binaries, check_command, help_envs, help_text};
use chat_checks::problems::Problems;
use chat_checks::root;
use std::collections::BTreeSet;
use std::path::Path;
use yaml_serde::Value;

/// The container path `host` (relative to the repository) is mounted at in service `s`.
fn mount_of<'a>(s: &'a Service, host: &str) -> &'a str {
    s.volumes
        .iter()
        .find(|(src, _)| src.trim_start_matches("./") == host)
        .map(|(_, target)| target.trim_end_matches(":ro"))
        .unwrap_or_else(|| panic!("{} does not mount ./{host}: {:?}", s.name, s.volumes))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `host:port` is a compose service that listens on `port`.
fn listens(c: &Compose, addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    let port: u16 = port.parse().unwrap_or(0);
    c.services
        .get(host)
        .is_some_and(|s| listen_ports(s).contains(&port))
}

#[test]
fn prometheus_runs_the_shipped_config_and_scrapes_every_node_and_the_persister() {
    let (c, mut p) = load();
    check_prometheus(&c, &mut p);
    p.assert_none("compose Prometheus");
}

/// The config Prometheus runs (`--config.file`, under its mount of deploy/prometheus/): its rule
/// files are there, every scrape target is a compose service listening on that port, and every
/// server the stack runs is scraped. Returns the config.
fn check_prometheus(c: &Compose, p: &mut Problems) -> Value {
    let prom = &c.services["prometheus"];
    let at = mount_of(prom, "deploy/prometheus");
    let config = prom
        .values("--config.file")
        .pop()
        .or_else(|| {
            prom.args
                .iter()
                .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        })
        .expect("prometheus --config.file");
    let relative = config
        .strip_prefix(&format!("{at}/"))
        .unwrap_or_else(|| panic!("--config.file {config} is not under the mount {at}"));
    let cfg = yaml(&root().join("deploy/prometheus").join(relative));
    for rules in cfg["rule_files"].as_sequence().into_iter().flatten() {
        let f = rules.as_str().unwrap();
        p.check(root().join("deploy/prometheus").join(f).is_file(), || {
            format!("rule file {f} is not in deploy/prometheus")
        });
    }
    let mut scraped = Vec::new();
    for job in cfg["scrape_configs"].as_sequence().expect("scrape_configs") {
        for sc in job["static_configs"].as_sequence().into_iter().flatten() {
            for t in sc["targets"].as_sequence().into_iter().flatten() {
                let t = t.as_str().unwrap();
                p.check(listens(c, t), || {
                    format!("scrape target {t} is no compose service listening there")
                });
                scraped.push(t.split(':').next().unwrap().to_string());
            }
        }
    }
    for s in c.services.values().filter(|s| s.binary().is_some()) {
        let serves = matches!(s.binary(), Some((b, _, _)) if *b != "loadgen");
        p.check(!serves || scraped.contains(&s.name), || {
            format!("{} runs a server but Prometheus does not scrape it", s.name)
        });
    }
    cfg
}

#[test]
fn grafana_provisions_the_dashboard_and_the_compose_prometheus() {
    let (c, mut p) = load();
    let g = &c.services["grafana"];
    assert_eq!(
        mount_of(g, "deploy/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    let dashboard = mount_of(g, "deploy/grafana/chat.json");
    let dir = root().join("deploy/grafana/provisioning");
    let providers = yaml(&dir.join("dashboards/chat.yml"));
    let path = providers["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    p.check(dashboard.starts_with(&format!("{path}/")), || {
        format!("chat.json is mounted at {dashboard}, the provider reads {path}")
    });
    let sources = yaml(&dir.join("datasources/prometheus.yml"));
    let url = sources["datasources"][0]["url"].as_str().unwrap();
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    p.check(listens(&c, addr) && addr.starts_with("prometheus:"), || {
        format!("the data source {url} is not the compose Prometheus")
    });
    p.check(g.depends_on.contains_key("prometheus"), || {
        "grafana must wait for prometheus".into()
    });
    p.assert_none("compose Grafana");
}

// ---- docker-compose.tls.yml --------------------------------------------------------------------

/// The stack as `docker compose -f docker-compose.yml -f docker-compose.tls.yml` runs it.
const TLS: &[&str] = &["docker-compose.yml", "docker-compose.tls.yml"];
/// The services that speak TLS only under the override.
const TLS_NODES: &[&str] = &["node1", "node2"];

/// A node's certificate and key: each flag with the values given by it or its `CHAT_*` fallback.
fn tls_files(s: &Service) -> [(&'static str, Vec<String>); 2] {
    [
        ("--tls-cert", "CHAT_TLS_CERT"),
        ("--tls-key", "CHAT_TLS_KEY"),
    ]
    .map(|(flag, env)| {
        let mut given = s.values(flag);
        given.extend(s.environment.get(env).cloned());
        (flag, given)
    })
}

#[test]
fn tls_nodes_read_a_mounted_certificate_and_check_health_over_https() {
    let (c, mut p) = load_files(TLS);
    let script = std::fs::read_to_string(root().join("scripts/tls-cert.sh")).unwrap();
    let ignored = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    for n in TLS_NODES {
        let s = &c.services[*n];
        for (flag, given) in tls_files(s) {
            let [file] = given.as_slice() else {
                p.push(format!(
                    "{n}: {flag} (or its CHAT_ variable) is {given:?}, not one file"
                ));
                continue;
            };
            let mount = s
                .volumes
                .iter()
                .filter(|(_, dst)| file.starts_with(&format!("{}/", dst.trim_end_matches('/'))))
                .max_by_key(|(_, dst)| dst.len());
            let Some((src, dst)) = mount else {
                p.push(format!("{n}: {flag} {file} is in no mount {:?}", s.volumes));
                continue;
            };
            p.check(s.read_only.contains(dst), || {
                format!("{n}: {dst}, which holds {file}, is not mounted read-only (:ro)")
            });
            let dst = dst.trim_end_matches('/');
            let host = format!("{}{}", src.trim_start_matches("./"), &file[dst.len()..]);
            let (dir, name) = host.rsplit_once('/').unwrap_or(("", &host));
            p.check(
                script.contains(dir) && script.contains(&format!("/{name}")),
                || format!("{n}: {flag} is ./{host}, which scripts/tls-cert.sh does not write"),
            );
            p.check(ignored.lines().any(|l| l.trim_matches('/') == dir), || {
                format!("./{dir}/ holds the private key but .gitignore does not list it")
            });
        }
        let test = s.healthcheck.clone().unwrap_or_default();
        let https = test.iter().find(|t| t.starts_with("https://"));
        match https.and_then(|u| parse_addr(u)) {
            None => p.push(format!(
                "{n}: healthcheck {test:?} requests no https:// URL"
            )),
            Some(a) => p.check(
                ["127.0.0.1", "localhost"].contains(&a.host.as_str())
                    && listen_ports(s).contains(&a.port)
                    && a.path == "/healthz",
                || format!("{n}: healthcheck {test:?} is not its own https://…:PORT/healthz"),
            ),
        }
        // curl trusts no self-signed certificate: -k (--insecure) or --cacert.
        let trusts = test.iter().any(|t| {
            t == "--insecure"
                || t.starts_with("--cacert")
                || (t.starts_with('-') && !t.starts_with("--") && t.contains('k'))
        });
        p.check(trusts, || {
            format!("{n}: healthcheck {test:?} would refuse the self-signed certificate")
        });
    }
    // Whatever speaks ws:// to a TLS node must not start, not even with the base file's profiles.
    let (base, _) = load();
    let base_profiles: BTreeSet<&String> =
        base.services.values().flat_map(|s| &s.profiles).collect();
    for s in c.services.values() {
        let plain = s.args.iter().any(|a| {
            TLS_NODES
                .iter()
                .any(|n| a.contains(&format!("ws://{n}:")) || a.contains(&format!("http://{n}:")))
        });
        let off = !s.profiles.is_empty() && s.profiles.iter().all(|p| !base_profiles.contains(p));
        p.check(!plain || off, || {
            format!(
                "{}: speaks plain ws:// or http:// to a TLS node but can still start (profiles {:?})",
                s.name, s.profiles
            )
        });
    }
    p.assert_none("docker-compose.tls.yml nodes");
}

#[test]
fn tls_prometheus_scrapes_the_nodes_over_https() {
    let (c, mut p) = load_files(TLS);
    let cfg = check_prometheus(&c, &mut p);
    let shipped = yaml(&root().join("deploy/prometheus/prometheus.yml"));
    let jobs = |cfg: &Value| -> Vec<String> {
        let jobs = cfg["scrape_configs"].as_sequence().into_iter().flatten();
        jobs.filter_map(|j| j["job_name"].as_str().map(str::to_string))
            .collect()
    };
    p.check(jobs(&cfg) == jobs(&shipped), || {
        "the TLS config must have prometheus.yml's jobs: the alert rules and dashboard select on `job`"
            .into()
    });
    for job in cfg["scrape_configs"].as_sequence().into_iter().flatten() {
        let name = job["job_name"].as_str().unwrap_or("?");
        let hosts: Vec<&str> = job["static_configs"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|sc| sc["targets"].as_sequence().into_iter().flatten())
            .filter_map(|t| t.as_str()?.split(':').next())
            .collect();
        let tls = hosts.iter().filter(|h| TLS_NODES.contains(h)).count();
        let scheme = job["scheme"].as_str().unwrap_or("http");
        p.check(tls == 0 || tls == hosts.len(), || {
            format!("job {name} mixes TLS nodes and plain targets {hosts:?}: one scheme each")
        });
        p.check((scheme == "https") == (tls > 0), || {
            format!("job {name} scrapes {hosts:?} with scheme {scheme}")
        });
        let t = &job["tls_config"];
        p.check(
            tls == 0 || t["insecure_skip_verify"] == Value::Bool(true) || t["ca_file"].is_string(),
            || format!("job {name}: https against a self-signed certificate needs insecure_skip_verify or ca_file"),
        );
    }
    p.assert_none("docker-compose.tls.yml Prometheus");
}

#[test]
fn tls_flags_and_environment_exist_in_the_binarys_help() {
    let Some(dir) = binaries() else { return };
    let (c, mut p) = load_files(TLS);
    for s in c.services.values() {
        let Some((bin, _, _)) = s.binary() else {
            continue;
        };
        check_command(&dir, &s.name, &s.args, &mut p);
        let envs = help_envs(&help_text(&dir, bin));
        for k in s.environment.keys().filter(|k| k.starts_with("CHAT_")) {
            p.check(envs.contains(k), || {
                format!("{}: {k} is no `[env: ]` of `{bin} --help`", s.name)
            });
        }
    }
    p.assert_none("docker-compose.tls.yml flags and environment");
}
