//! `docker-compose.yml`'s Prometheus and Grafana against `deploy/`: they mount the shipped
//! files where their commands and provisioning look, every scrape target of
//! `deploy/prometheus/prometheus.yml` is a compose service listening on that port, and
//! Grafana's data source is the compose Prometheus.

use chat_checks::compose::*;
use chat_checks::root;
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
                p.check(listens(&c, t), || {
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
    p.assert_none("compose Prometheus");
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
