//! `docker-compose.yml` read into plain data ([`Compose`], one [`Service`] each), and the
//! helpers the compose checks share: addresses in flag values, published and listen ports,
//! start order. The checks themselves are `tests/compose*.rs`.

use crate::help::{flag_pairs, BINARIES};
use crate::problems::Problems;
use crate::root;
use std::collections::{BTreeMap, BTreeSet};
use yaml_serde::Value;

/// Every service the stack must have.
pub const EXPECTED: &[&str] = &[
    "redis",
    "kafka",
    "kafka-init",
    "postgres",
    "persister",
    "node1",
    "node2",
    "loadgen",
    "prometheus",
    "grafana",
];

/// Ports of the third-party images (by image name without tag) when nothing configures them.
pub const IMAGE_PORTS: &[(&str, u16)] = &[
    ("redis", 6379),
    ("postgres", 5432),
    ("prom/prometheus", 9090),
    ("grafana/grafana", 3000),
];

/// Default ports of URL schemes.
pub const SCHEME_PORTS: &[(&str, u16)] = &[
    ("redis", 6379),
    ("postgres", 5432),
    ("postgresql", 5432),
    ("ws", 80),
    ("http", 80),
];

// ---- the compose file, read into plain data --------------------------------------------------

#[derive(Debug, Default)]
pub struct Service {
    pub name: String,
    pub image: Option<String>,
    /// Build context (`build: .` or `build: {context: .}`).
    pub build: Option<String>,
    /// `entrypoint` followed by `command` (exec form).
    pub args: Vec<String>,
    /// `healthcheck.test`, without its leading `CMD`/`CMD-SHELL` (a shell string is split on
    /// whitespace).
    pub healthcheck: Option<Vec<String>>,
    /// service -> condition (`None`: the short list form, no condition).
    pub depends_on: BTreeMap<String, Option<String>>,
    /// (host port, container port); host None when only the container port is given.
    pub ports: Vec<(Option<u16>, u16)>,
    pub profiles: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// (source, target) of each volume or bind mount.
    pub volumes: Vec<(String, String)>,
    /// Targets of the volumes and bind mounts that are read-only (`:ro`, `read_only: true`).
    pub read_only: BTreeSet<String>,
    pub restart: Option<String>,
    pub pull_policy: Option<String>,
}

impl Service {
    /// The workspace binary this service runs, if any.
    pub fn binary(&self) -> Option<&'static (&'static str, &'static str, Option<&'static str>)> {
        let first = self.args.first()?;
        BINARIES.iter().find(|(b, _, _)| first == b)
    }

    /// `--flag value` / `--flag=value` pairs of the command, in order. A flag followed by
    /// another flag (or nothing) has no value; `help_checks` verifies against `--help` that
    /// this reading is the binary's.
    pub fn flags(&self) -> Vec<(String, Option<String>)> {
        flag_pairs(&self.args)
    }

    /// Every value given to `flag`.
    pub fn values(&self, flag: &str) -> Vec<String> {
        self.flags()
            .into_iter()
            .filter(|(f, _)| f == flag)
            .filter_map(|(_, v)| v)
            .collect()
    }

    /// The image without tag and default registry: `redis:7.4` and
    /// `docker.io/library/redis:7.4` are `redis`.
    pub fn image_name(&self) -> Option<&str> {
        let image = self.image.as_deref()?;
        let name = match image.rsplit_once(':') {
            Some((n, tag)) if !tag.contains('/') => n,
            _ => image,
        };
        let name = name.strip_prefix("docker.io/").unwrap_or(name);
        Some(name.strip_prefix("library/").unwrap_or(name))
    }
}

/// A scalar as text (numbers and booleans as YAML wrote them).
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn strings(v: Option<&Value>, what: &str, problems: &mut Problems) -> Vec<String> {
    match v {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|i| {
                scalar(i).unwrap_or_else(|| {
                    problems.push(format!("{what}: {i:?} is not a string"));
                    String::new()
                })
            })
            .collect(),
        Some(other) => {
            problems.push(format!(
                "{what} must be a list (exec form), not {other:?}: a shell string hides the \
                 arguments from this test and from signals"
            ));
            Vec::new()
        }
    }
}

pub struct Compose {
    pub services: BTreeMap<String, Service>,
    /// Named volumes declared at the top level.
    pub volumes: BTreeSet<String>,
}

/// `docker-compose.yml` alone.
pub fn load() -> (Compose, Problems) {
    load_files(&["docker-compose.yml"])
}

/// The repository's compose `files` merged in order, as `docker compose -f A -f B` does
/// ([`crate::compose_merge`]).
pub fn load_files(files: &[&str]) -> (Compose, Problems) {
    let mut doc = Value::Null;
    for file in files {
        let path = root().join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut layer: Value =
            yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        layer
            .apply_merge()
            .unwrap_or_else(|e| panic!("{file}: bad `<<` merge: {e}"));
        crate::compose_merge::merge(&mut doc, layer, "");
    }
    let mut problems = Problems::default();
    let mut services = BTreeMap::new();
    let map = doc
        .get("services")
        .and_then(Value::as_mapping)
        .unwrap_or_else(|| panic!("{files:?}: no `services:` mapping"));
    for (name, v) in map {
        let name = name.as_str().expect("service name").to_string();
        let mut s = Service {
            name: name.clone(),
            ..Service::default()
        };
        s.image = v.get("image").and_then(scalar);
        s.build = match v.get("build") {
            None => None,
            Some(Value::String(ctx)) => Some(ctx.clone()),
            Some(b) => b.get("context").and_then(scalar),
        };
        s.args = strings(
            v.get("entrypoint"),
            &format!("{name}.entrypoint"),
            &mut problems,
        );
        s.args.extend(strings(
            v.get("command"),
            &format!("{name}.command"),
            &mut problems,
        ));
        if let Some(h) = v.get("healthcheck") {
            let test = strings(
                h.get("test"),
                &format!("{name}.healthcheck.test"),
                &mut problems,
            );
            s.healthcheck = Some(match test.first().map(String::as_str) {
                Some("CMD") => test[1..].to_vec(),
                Some("CMD-SHELL") => test[1..]
                    .join(" ")
                    .split_whitespace()
                    .map(str::to_string)
                    .collect(),
                _ => {
                    problems.push(format!(
                        "{name}.healthcheck.test must start with CMD or CMD-SHELL: {test:?}"
                    ));
                    Vec::new()
                }
            });
        }
        match v.get("depends_on") {
            None => {}
            Some(Value::Sequence(items)) => {
                for i in items {
                    s.depends_on.insert(scalar(i).unwrap_or_default(), None);
                }
            }
            Some(Value::Mapping(m)) => {
                for (dep, cond) in m {
                    s.depends_on.insert(
                        scalar(dep).unwrap_or_default(),
                        cond.get("condition").and_then(scalar),
                    );
                }
            }
            Some(other) => problems.push(format!("{name}.depends_on: unexpected {other:?}")),
        }
        for p in v
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            match parse_port(p) {
                Some(pair) => s.ports.push(pair),
                None => problems.push(format!("{name}.ports: cannot read {p:?}")),
            }
        }
        s.profiles = strings(
            v.get("profiles"),
            &format!("{name}.profiles"),
            &mut problems,
        );
        match v.get("environment") {
            None => {}
            Some(Value::Mapping(m)) => {
                for (k, val) in m {
                    s.environment.insert(
                        scalar(k).unwrap_or_default(),
                        scalar(val).unwrap_or_default(),
                    );
                }
            }
            Some(Value::Sequence(items)) => {
                for i in items {
                    let kv = scalar(i).unwrap_or_default();
                    let (k, val) = kv.split_once('=').unwrap_or((&kv, ""));
                    s.environment.insert(k.to_string(), val.to_string());
                }
            }
            Some(other) => problems.push(format!("{name}.environment: unexpected {other:?}")),
        }
        for vol in v
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let (pair, ro) = match vol {
                Value::String(spec) => {
                    let mut parts = spec.split(':');
                    let pair = match (parts.next(), parts.next()) {
                        (Some(src), Some(dst)) => Some((src.to_string(), dst.to_string())),
                        _ => None,
                    };
                    (
                        pair,
                        parts
                            .next()
                            .is_some_and(|m| m.split(',').any(|o| o == "ro")),
                    )
                }
                m => (
                    m.get("source")
                        .and_then(scalar)
                        .zip(m.get("target").and_then(scalar)),
                    m.get("read_only").and_then(Value::as_bool) == Some(true),
                ),
            };
            if let (Some((_, dst)), true) = (&pair, ro) {
                s.read_only.insert(dst.clone());
            }
            match pair {
                Some(p) => s.volumes.push(p),
                None => problems.push(format!("{name}.volumes: cannot read {vol:?}")),
            }
        }
        s.restart = v.get("restart").and_then(scalar);
        s.pull_policy = v.get("pull_policy").and_then(scalar);
        services.insert(name, s);
    }
    let volumes = doc
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(scalar).collect())
        .unwrap_or_default();
    (Compose { services, volumes }, problems)
}

/// `"8081:8080"`, `"127.0.0.1:8081:8080"`, `"8080"`, `"8081:8080/tcp"` or the long form.
pub fn parse_port(p: &Value) -> Option<(Option<u16>, u16)> {
    if let Some(m) = p.as_mapping() {
        let target = m.get("target").and_then(scalar)?.parse().ok()?;
        let published = match m.get("published").and_then(scalar) {
            Some(h) => Some(h.parse().ok()?),
            None => None,
        };
        return Some((published, target));
    }
    let spec = scalar(p)?;
    let spec = spec.split('/').next()?;
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    match parts.as_slice() {
        [c] => Some((None, c.parse().ok()?)),
        [c, h, ..] => Some((Some(h.parse().ok()?), c.parse().ok()?)),
        [] => None,
    }
}

/// One-shot services: something waits for them to exit 0.
pub fn one_shots(c: &Compose) -> BTreeSet<String> {
    c.services
        .values()
        .flat_map(|s| &s.depends_on)
        .filter(|(_, cond)| cond.as_deref() == Some("service_completed_successfully"))
        .map(|(d, _)| d.clone())
        .collect()
}

/// Every service `name` waits for, directly or not.
pub fn waits_for(c: &Compose, name: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        for d in c
            .services
            .get(&n)
            .into_iter()
            .flat_map(|s| s.depends_on.keys())
        {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

/// `host:port` of an address in a flag value: `redis://redis:6379`,
/// `postgres://u:p@postgres:5432/db`, `ws://node1:8080`, `kafka:9092`. None: not an address.
pub struct Addr {
    pub scheme: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    pub path: String,
}

pub fn parse_addr(item: &str) -> Option<Addr> {
    let (scheme, rest) = match item.split_once("://") {
        Some((s, r)) => (Some(s.to_string()), r),
        None => (None, item),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, String::new()),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(u.to_string()), None),
        },
        None => (None, None),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().ok()?),
        None => {
            let default = SCHEME_PORTS
                .iter()
                .find(|(s, _)| Some(*s) == scheme.as_deref())?
                .1;
            (hostport.to_string(), default)
        }
    };
    let plain_name = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    // Without a scheme, only `name:port` counts (not `0.0.0.0:8080` of a listen flag, which
    // the caller skips anyway, nor `KEY=VALUE`).
    if !plain_name || (scheme.is_none() && item.contains('=')) {
        return None;
    }
    Some(Addr {
        scheme,
        user,
        password,
        host,
        port,
        path,
    })
}

/// The Kafka listeners of a `KAFKA_LISTENERS`-style value: name -> (host, port).
pub fn kafka_listeners(v: &str) -> BTreeMap<String, (String, u16)> {
    v.split(',')
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once("://")?;
            let (host, port) = rest.rsplit_once(':')?;
            Some((name.to_string(), (host.to_string(), port.parse().ok()?)))
        })
        .collect()
}

/// Ports a service accepts connections on.
pub fn listen_ports(s: &Service) -> Vec<u16> {
    if s.binary().is_some() {
        return s
            .flags()
            .into_iter()
            .filter(|(f, _)| f.ends_with("listen"))
            .filter_map(|(_, v)| v?.rsplit_once(':')?.1.parse().ok())
            .collect();
    }
    match s.image_name() {
        Some("apache/kafka") => s
            .environment
            .get("KAFKA_LISTENERS")
            .map(|l| kafka_listeners(l).values().map(|(_, p)| *p).collect())
            .unwrap_or_default(),
        Some(name) => {
            // `redis-server --port N` and the like.
            if let Some(p) = s.values("--port").first().and_then(|p| p.parse().ok()) {
                return vec![p];
            }
            IMAGE_PORTS
                .iter()
                .filter(|(i, _)| *i == name)
                .map(|(_, p)| *p)
                .collect()
        }
        None => Vec::new(),
    }
}

/// `${NAME:-default}` of a shell script.
pub fn shell_default(script: &str, var: &str) -> Option<String> {
    let start = script.find(&format!("${{{var}:-"))? + var.len() + 4;
    let end = script[start..].find('}')? + start;
    Some(script[start..end].to_string())
}

// ---- the checks ------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::help::help_flags;

    #[test]
    fn the_reader_of_this_file_parses_what_it_should() {
        // The helpers above, on the shapes they have to handle.
        let a = parse_addr("postgres://postgres:chat@postgres:5432/chat").unwrap();
        assert_eq!(
            (
                a.user.as_deref(),
                a.password.as_deref(),
                a.host.as_str(),
                a.port,
                a.path.as_str()
            ),
            (Some("postgres"), Some("chat"), "postgres", 5432, "/chat")
        );
        let a = parse_addr("kafka:9092").unwrap();
        assert_eq!((a.host.as_str(), a.port, a.scheme), ("kafka", 9092, None));
        assert_eq!(parse_addr("redis://redis").unwrap().port, 6379);
        assert!(parse_addr("0").is_none() && parse_addr("yes").is_none());
        assert!(parse_addr("fetch.max.bytes=1:2").is_none());
        let flags = flag_pairs(&["x", "--a", "1", "--b", "--c=2", "--d"].map(String::from));
        assert_eq!(
            flags,
            [
                ("--a".into(), Some("1".into())),
                ("--b".into(), None),
                ("--c".into(), Some("2".into())),
                ("--d".into(), None)
            ]
        );
        let help = help_flags(
            "Options:\n      --listen <LISTEN>\n          Address; `--foo` here is prose\n  \
             -h, --help\n          Print help\n      --no-plots\n      --kafka-option <KEY=VALUE>\n",
        );
        assert_eq!(
            help.into_iter().collect::<Vec<_>>(),
            [
                ("--help".to_string(), false),
                ("--kafka-option".to_string(), true),
                ("--listen".to_string(), true),
                ("--no-plots".to_string(), false)
            ]
        );
        assert_eq!(
            parse_port(&Value::from("8081:8080")),
            Some((Some(8081), 8080))
        );
        assert_eq!(
            parse_port(&Value::from("127.0.0.1:8081:8080/tcp")),
            Some((Some(8081), 8080))
        );
        assert_eq!(parse_port(&Value::from("8080")), Some((None, 8080)));
        assert_eq!(
            shell_default("x=${CLUSTER_TOPIC:-chat.messages}\n", "CLUSTER_TOPIC").as_deref(),
            Some("chat.messages")
        );
        let l = kafka_listeners("PLAINTEXT://:9092,CONTROLLER://kafka:9093");
        assert_eq!(l["CONTROLLER"], ("kafka".to_string(), 9093));
        assert_eq!(l["PLAINTEXT"], (String::new(), 9092));
    }
}
