//! `docker-compose.yml` checked against reality, since no Docker engine runs where the tests do:
//! the services and their health checks and start order, every `--flag` against the real
//! binary's `--help`, every address against the services that listen there, the Kafka topic
//! against `kafka-init` and `scripts/cluster.sh`, the published ports against the listen flags,
//! and the `Dockerfile` against the binaries the services run.
//!
//! The flag checks run `chat-persister` and `loadgen` from the same target directory as
//! `chat-server` (`cargo test --workspace` builds them); without them those checks say
//! `SKIPPED` (or fail when `CHAT_REQUIRE_E2E=1`, as `scripts/test.sh` sets).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use yaml_serde::Value;

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every service the stack must have.
const EXPECTED: &[&str] = &[
    "redis",
    "kafka",
    "kafka-init",
    "postgres",
    "persister",
    "node1",
    "node2",
    "loadgen",
];

/// The workspace's binaries a service may run: (binary, cargo package, its listen flag, whose
/// default binds loopback only, so that a container must set it).
const BINARIES: &[(&str, &str, Option<&str>)] = &[
    ("chat-server", "chat-server", Some("--listen")),
    ("chat-persister", "chat-persister", Some("--metrics-listen")),
    ("loadgen", "loadgen", None),
];

/// Ports of the third-party images (by image name without tag) when nothing configures them.
const IMAGE_PORTS: &[(&str, u16)] = &[("redis", 6379), ("postgres", 5432)];

/// Default ports of URL schemes.
const SCHEME_PORTS: &[(&str, u16)] = &[
    ("redis", 6379),
    ("postgres", 5432),
    ("postgresql", 5432),
    ("ws", 80),
    ("http", 80),
];

// ---- the compose file, read into plain data --------------------------------------------------

#[derive(Debug, Default)]
struct Service {
    name: String,
    image: Option<String>,
    /// Build context (`build: .` or `build: {context: .}`).
    build: Option<String>,
    /// `entrypoint` followed by `command` (exec form).
    args: Vec<String>,
    /// `healthcheck.test`, without its leading `CMD`/`CMD-SHELL` (a shell string is split on
    /// whitespace).
    healthcheck: Option<Vec<String>>,
    /// service -> condition (`None`: the short list form, no condition).
    depends_on: BTreeMap<String, Option<String>>,
    /// (host port, container port); host None when only the container port is given.
    ports: Vec<(Option<u16>, u16)>,
    profiles: Vec<String>,
    environment: BTreeMap<String, String>,
    /// (source, target) of each volume or bind mount.
    volumes: Vec<(String, String)>,
    restart: Option<String>,
    pull_policy: Option<String>,
}

impl Service {
    /// The workspace binary this service runs, if any.
    fn binary(&self) -> Option<&'static (&'static str, &'static str, Option<&'static str>)> {
        let first = self.args.first()?;
        BINARIES.iter().find(|(b, _, _)| first == b)
    }

    /// `--flag value` / `--flag=value` pairs of the command, in order. A flag followed by
    /// another flag (or nothing) has no value; `help_checks` verifies against `--help` that
    /// this reading is the binary's.
    fn flags(&self) -> Vec<(String, Option<String>)> {
        flag_pairs(&self.args)
    }

    /// Every value given to `flag`.
    fn values(&self, flag: &str) -> Vec<String> {
        self.flags()
            .into_iter()
            .filter(|(f, _)| f == flag)
            .filter_map(|(_, v)| v)
            .collect()
    }

    /// The image without tag and default registry: `redis:7.4` and
    /// `docker.io/library/redis:7.4` are `redis`.
    fn image_name(&self) -> Option<&str> {
        let image = self.image.as_deref()?;
        let name = match image.rsplit_once(':') {
            Some((n, tag)) if !tag.contains('/') => n,
            _ => image,
        };
        let name = name.strip_prefix("docker.io/").unwrap_or(name);
        Some(name.strip_prefix("library/").unwrap_or(name))
    }
}

fn flag_pairs(args: &[String]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(rest) = a.strip_prefix("--") {
            if let Some((f, v)) = rest.split_once('=') {
                out.push((format!("--{f}"), Some(v.to_string())));
            } else if args.get(i + 1).is_some_and(|n| !n.starts_with("--")) {
                out.push((a.clone(), Some(args[i + 1].clone())));
                i += 1;
            } else {
                out.push((a.clone(), None));
            }
        }
        i += 1;
    }
    out
}

/// A scalar as text (numbers and booleans as YAML wrote them).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>, what: &str, problems: &mut Problems) -> Vec<String> {
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

struct Compose {
    services: BTreeMap<String, Service>,
    /// Named volumes declared at the top level.
    volumes: BTreeSet<String>,
}

fn load() -> (Compose, Problems) {
    let path = root().join("docker-compose.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut doc: Value = yaml_serde::from_str(&text)
        .unwrap_or_else(|e| panic!("docker-compose.yml is not valid YAML: {e}"));
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("docker-compose.yml: bad `<<` merge: {e}"));
    let mut problems = Problems::default();
    let mut services = BTreeMap::new();
    let map = doc
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has no `services:` mapping");
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
            let pair = match vol {
                Value::String(spec) => {
                    let mut parts = spec.split(':');
                    match (parts.next(), parts.next()) {
                        (Some(src), Some(dst)) => Some((src.to_string(), dst.to_string())),
                        _ => None,
                    }
                }
                m => m
                    .get("source")
                    .and_then(scalar)
                    .zip(m.get("target").and_then(scalar)),
            };
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
fn parse_port(p: &Value) -> Option<(Option<u16>, u16)> {
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

// ---- problems are collected, then reported all at once ---------------------------------------

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, p: String) {
        self.0.push(p);
    }
    fn check(&mut self, ok: bool, p: impl FnOnce() -> String) {
        if !ok {
            self.0.push(p());
        }
    }
    fn assert_none(self, what: &str) {
        if self.0.is_empty() {
            return;
        }
        let mut msg = format!("{what}: {} problem(s):\n", self.0.len());
        for p in &self.0 {
            let _ = writeln!(msg, "  - {p}");
        }
        panic!("{msg}");
    }
}

// ---- helpers shared by the checks ------------------------------------------------------------

/// One-shot services: something waits for them to exit 0.
fn one_shots(c: &Compose) -> BTreeSet<String> {
    c.services
        .values()
        .flat_map(|s| &s.depends_on)
        .filter(|(_, cond)| cond.as_deref() == Some("service_completed_successfully"))
        .map(|(d, _)| d.clone())
        .collect()
}

/// Every service `name` waits for, directly or not.
fn waits_for(c: &Compose, name: &str) -> BTreeSet<String> {
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
struct Addr {
    scheme: Option<String>,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: u16,
    path: String,
}

fn parse_addr(item: &str) -> Option<Addr> {
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
fn kafka_listeners(v: &str) -> BTreeMap<String, (String, u16)> {
    v.split(',')
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once("://")?;
            let (host, port) = rest.rsplit_once(':')?;
            Some((name.to_string(), (host.to_string(), port.parse().ok()?)))
        })
        .collect()
}

/// Ports a service accepts connections on.
fn listen_ports(s: &Service) -> Vec<u16> {
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
fn shell_default(script: &str, var: &str) -> Option<String> {
    let start = script.find(&format!("${{{var}:-"))? + var.len() + 4;
    let end = script[start..].find('}')? + start;
    Some(script[start..end].to_string())
}

// ---- the checks ------------------------------------------------------------------------------

#[test]
fn services_health_checks_and_start_order() {
    let (c, mut p) = load();
    for name in EXPECTED {
        p.check(c.services.contains_key(*name), || {
            format!("service `{name}` is missing")
        });
    }
    let one_shots = one_shots(&c);
    for s in c.services.values() {
        let n = &s.name;
        p.check(s.image.is_some() || s.build.is_some(), || {
            format!("{n}: neither image nor build")
        });
        let one_shot = one_shots.contains(n);
        if one_shot || !s.profiles.is_empty() {
            // Runs once: restarting it after it exited would repeat it forever.
            p.check(s.restart.as_deref() == Some("no"), || {
                format!("{n} runs once, so it needs `restart: \"no\"`")
            });
        }
        if one_shot {
            p.check(s.healthcheck.is_none(), || {
                format!(
                    "{n} runs once (others wait for it to exit 0): a healthcheck makes no sense"
                )
            });
        } else if s.profiles.is_empty() {
            p.check(
                s.healthcheck.as_ref().is_some_and(|t| !t.is_empty()),
                || format!("{n} is a long-running service without a healthcheck"),
            );
        }
        for (dep, cond) in &s.depends_on {
            let Some(d) = c.services.get(dep) else {
                p.push(format!("{n} depends on `{dep}`, which is not a service"));
                continue;
            };
            let want = if one_shots.contains(dep) {
                "service_completed_successfully"
            } else if d.healthcheck.is_some() {
                "service_healthy"
            } else {
                p.push(format!(
                    "{n} depends on {dep}, which has no healthcheck and does not run once: \
                     nothing says when it is ready"
                ));
                continue;
            };
            p.check(cond.as_deref() == Some(want), || {
                format!("{n} depends on {dep} with condition {cond:?}; it should be `{want}`")
            });
            p.check(d.profiles.is_empty() || d.profiles == s.profiles, || {
                format!(
                    "{n} depends on {dep}, which only runs with --profile {:?}",
                    d.profiles
                )
            });
        }
        p.check(!waits_for(&c, n).contains(n), || {
            format!("{n} waits for itself (a depends_on cycle)")
        });
        for (src, dst) in &s.volumes {
            let named = !src.starts_with(['.', '/', '~']);
            p.check(!named || c.volumes.contains(src), || {
                format!("{n} mounts volume `{src}` at {dst}, not declared under top-level volumes")
            });
        }
    }
    p.assert_none("docker-compose.yml services");
}

#[test]
fn ports_match_the_listen_flags_and_health_checks() {
    let (c, mut p) = load();
    let mut host_ports: BTreeMap<u16, &str> = BTreeMap::new();
    for s in c.services.values() {
        let n = &s.name;
        let listening = listen_ports(s);
        for (host, container) in &s.ports {
            if let Some(h) = host {
                if let Some(other) = host_ports.insert(*h, n) {
                    p.push(format!(
                        "host port {h} is published by both {other} and {n}"
                    ));
                }
            }
            p.check(listening.contains(container), || {
                format!("{n} publishes container port {container}, but listens on {listening:?}")
            });
        }
        let Some((bin, _, listen_flag)) = s.binary() else {
            continue;
        };
        if let Some(flag) = listen_flag {
            // The default binds 127.0.0.1: unreachable from the other containers and the host.
            let values = s.values(flag);
            p.check(!values.is_empty(), || {
                format!(
                    "{n}: {bin} needs an explicit {flag} 0.0.0.0:PORT (its default is loopback)"
                )
            });
            for v in values {
                p.check(v.starts_with("0.0.0.0:") || v.starts_with("[::]:"), || {
                    format!("{n}: {flag} {v} is not reachable from outside its container (bind 0.0.0.0)")
                });
            }
        }
        if let Some(test) = &s.healthcheck {
            let url = test.iter().find(|t| t.starts_with("http://"));
            match url.and_then(|u| parse_addr(u)) {
                None => p.push(format!("{n}: healthcheck {test:?} requests no http:// URL")),
                Some(a) => {
                    p.check(
                        ["127.0.0.1", "localhost"].contains(&a.host.as_str()),
                        || format!("{n}: healthcheck asks {}, not the container itself", a.host),
                    );
                    p.check(listening.contains(&a.port), || {
                        format!(
                            "{n}: healthcheck port {} but {bin} listens on {listening:?}",
                            a.port
                        )
                    });
                    p.check(a.path == "/healthz", || {
                        format!("{n}: healthcheck path {} is not /healthz", a.path)
                    });
                }
            }
        }
    }
    p.assert_none("docker-compose.yml ports");
}

#[test]
fn kafka_is_one_kraft_node_and_every_service_uses_the_topic_kafka_init_creates() {
    let (c, mut p) = load();
    let kafka = c.services.get("kafka").expect("service kafka");
    let env = |k: &str| kafka.environment.get(k).cloned().unwrap_or_default();
    p.check(kafka.image_name() == Some("apache/kafka"), || {
        format!(
            "kafka runs {:?}, not the official apache/kafka image",
            kafka.image
        )
    });
    let roles = env("KAFKA_PROCESS_ROLES");
    let role_set: BTreeSet<&str> = roles.split(',').map(str::trim).collect();
    p.check(role_set == BTreeSet::from(["broker", "controller"]), || {
        format!("KAFKA_PROCESS_ROLES is `{roles}`, not broker,controller (one KRaft node)")
    });
    let node_id = env("KAFKA_NODE_ID");
    p.check(node_id.parse::<u32>().is_ok(), || {
        format!("KAFKA_NODE_ID `{node_id}` is not a number")
    });
    let listeners = kafka_listeners(&env("KAFKA_LISTENERS"));
    let protocols: BTreeSet<String> = env("KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
        .split(',')
        .filter_map(|m| Some(m.split_once(':')?.0.trim().to_string()))
        .collect();
    for name in listeners.keys() {
        p.check(protocols.contains(name), || {
            format!("listener {name} has no entry in KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
        });
    }
    let controller = env("KAFKA_CONTROLLER_LISTENER_NAMES");
    match listeners.get(&controller) {
        None => p.push(format!(
            "KAFKA_CONTROLLER_LISTENER_NAMES `{controller}` is not one of KAFKA_LISTENERS {listeners:?}"
        )),
        Some((_, port)) => {
            let voters = env("KAFKA_CONTROLLER_QUORUM_VOTERS");
            let want = [format!("{node_id}@kafka:{port}"), format!("{node_id}@localhost:{port}")];
            p.check(voters.split(',').any(|v| want.contains(&v.trim().to_string())), || {
                format!(
                    "KAFKA_CONTROLLER_QUORUM_VOTERS `{voters}` should name this node: {}",
                    want[0]
                )
            });
        }
    }
    let inter = env("KAFKA_INTER_BROKER_LISTENER_NAME");
    p.check(inter.is_empty() || listeners.contains_key(&inter), || {
        format!("KAFKA_INTER_BROKER_LISTENER_NAME `{inter}` is not a listener")
    });
    // Clients reconnect to the advertised address: it must be the one they bootstrap from.
    let advertised = kafka_listeners(&env("KAFKA_ADVERTISED_LISTENERS"));
    let mut clients: BTreeSet<u16> = BTreeSet::new();
    for s in c.services.values() {
        for (f, v) in s.flags() {
            if f == "--kafka" || f == "--bootstrap-server" {
                for item in v.unwrap_or_default().split(',') {
                    if let Some(a) = parse_addr(item).filter(|a| a.host == "kafka") {
                        clients.insert(a.port);
                    }
                }
            }
        }
    }
    p.check(!clients.is_empty(), || {
        "nothing connects to kafka".to_string()
    });
    for port in &clients {
        let adv = advertised
            .iter()
            .find(|(name, _)| listeners.get(*name).is_some_and(|(_, p)| p == port));
        p.check(
            adv.is_some_and(|(_, (h, p))| h == "kafka" && p == port),
            || {
                format!(
                "clients bootstrap from kafka:{port}, but KAFKA_ADVERTISED_LISTENERS advertises \
                 {adv:?} for that listener (it must be kafka:{port})"
            )
            },
        );
    }
    for k in [
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ] {
        p.check(env(k) == "1", || {
            format!("{k} is `{}`; a single broker needs 1", env(k))
        });
    }
    p.check(env("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false", || {
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE should be false: a mistyped topic must fail, not appear"
            .to_string()
    });
    if let Some(id) = kafka.environment.get("CLUSTER_ID") {
        // A KRaft cluster id is a UUID in unpadded base64url: 22 characters.
        p.check(
            id.len() == 22
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            || format!("CLUSTER_ID `{id}` is not a 22-character base64url UUID"),
        );
    }
    p.check(
        kafka
            .healthcheck
            .iter()
            .flatten()
            .any(|t| t.starts_with("/opt/kafka/bin/")),
        || "kafka's healthcheck should use the image's /opt/kafka/bin tools".to_string(),
    );

    // kafka-init creates the topic the way scripts/cluster.sh does.
    let cluster = std::fs::read_to_string(root().join("scripts/cluster.sh")).expect("cluster.sh");
    let want_topic = shell_default(&cluster, "CLUSTER_TOPIC").expect("CLUSTER_TOPIC in cluster.sh");
    let want_partitions =
        shell_default(&cluster, "CLUSTER_PARTITIONS").expect("CLUSTER_PARTITIONS in cluster.sh");
    let init = c.services.get("kafka-init").expect("service kafka-init");
    p.check(init.image == kafka.image, || {
        format!(
            "kafka-init runs {:?}, kafka {:?}: use the same image",
            init.image, kafka.image
        )
    });
    p.check(
        init.args
            .first()
            .is_some_and(|a| a.ends_with("/kafka-topics.sh"))
            && init.args.iter().any(|a| a == "--create"),
        || {
            format!(
                "kafka-init does not run kafka-topics.sh --create: {:?}",
                init.args
            )
        },
    );
    let topic = init.values("--topic");
    p.check(topic == [want_topic.clone()], || {
        format!("kafka-init creates topic {topic:?}; scripts/cluster.sh uses `{want_topic}`")
    });
    let partitions = init.values("--partitions");
    p.check(partitions == [want_partitions.clone()], || {
        format!("kafka-init makes {partitions:?} partitions; scripts/cluster.sh makes {want_partitions}")
    });
    p.check(init.values("--replication-factor") == ["1"], || {
        "kafka-init needs --replication-factor 1 (one broker)".to_string()
    });

    // Every producer and consumer names that topic explicitly.
    for s in c.services.values() {
        let Some((bin, _, _)) = s.binary() else {
            continue;
        };
        let topic_flags: &[&str] = match *bin {
            "chat-server" => &["--kafka-topic"],
            "chat-persister" => &["--topic", "--kafka-topic"],
            _ => continue,
        };
        let used: Vec<String> = topic_flags.iter().flat_map(|f| s.values(f)).collect();
        p.check(used == [want_topic.clone()], || {
            format!(
                "{}: {} topic {used:?}, but kafka-init creates `{want_topic}` ({})",
                s.name,
                bin,
                topic_flags.join(" or ")
            )
        });
    }
    p.assert_none("docker-compose.yml Kafka");
}

#[test]
fn addresses_point_at_services_that_listen_there() {
    let (c, mut p) = load();
    for s in c.services.values() {
        let n = &s.name;
        let waits = waits_for(&c, n);
        for (flag, value) in s.flags() {
            if flag.ends_with("listen") {
                continue;
            }
            for item in value.unwrap_or_default().split(',') {
                let Some(a) = parse_addr(item) else { continue };
                if a.scheme.is_none() && a.host.parse::<std::net::IpAddr>().is_ok() {
                    continue;
                }
                let Some(target) = c.services.get(&a.host) else {
                    p.push(format!(
                        "{n}: {flag} {item}: there is no service `{}`",
                        a.host
                    ));
                    continue;
                };
                let ports = listen_ports(target);
                p.check(ports.contains(&a.port), || {
                    format!(
                        "{n}: {flag} {item}: {} listens on {ports:?}, not {}",
                        a.host, a.port
                    )
                });
                p.check(waits.contains(&a.host), || {
                    format!(
                        "{n}: {flag} {item}: {n} does not wait for {} (depends_on)",
                        a.host
                    )
                });
                if target.image_name() == Some("postgres") {
                    let env = |k: &str| target.environment.get(k).cloned();
                    let user = env("POSTGRES_USER").unwrap_or("postgres".into());
                    let db = env("POSTGRES_DB").unwrap_or(user.clone());
                    p.check(a.user.as_deref() == Some(&user), || {
                        format!("{n}: {flag} {item}: user is not POSTGRES_USER `{user}`")
                    });
                    p.check(a.password == env("POSTGRES_PASSWORD"), || {
                        format!("{n}: {flag} {item}: password is not POSTGRES_PASSWORD")
                    });
                    p.check(a.path == format!("/{db}"), || {
                        format!("{n}: {flag} {item}: database is not POSTGRES_DB `{db}`")
                    });
                }
            }
        }
    }
    // The load run targets every node.
    let loadgen = c.services.get("loadgen").expect("service loadgen");
    let urls: BTreeSet<String> = loadgen
        .values("--url")
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|u| parse_addr(u).map(|a| a.host))
        .collect();
    for s in c.services.values() {
        if s.binary().is_some_and(|b| b.0 == "chat-server") {
            p.check(urls.contains(&s.name), || {
                format!("loadgen --url does not include node {}", s.name)
            });
        }
    }
    p.check(!loadgen.profiles.is_empty(), || {
        "loadgen must be in a profile: `docker compose up` should not start a load run".into()
    });
    for dir in loadgen.values("--results-dir") {
        p.check(
            loadgen
                .volumes
                .iter()
                .any(|(src, dst)| *dst == dir && src.starts_with("./")),
            || {
                format!(
                    "loadgen writes {dir}, which is not a bind mount of the project (./results)"
                )
            },
        );
    }
    p.assert_none("docker-compose.yml addresses");
}

#[test]
fn dockerfile_builds_and_ships_every_binary_the_services_run() {
    let (c, mut p) = load();
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let text = text.replace("\\\n", " ");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Stages: (name, lines).
    let mut stages: Vec<(String, Vec<&str>)> = Vec::new();
    for l in &lines {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words[0].eq_ignore_ascii_case("FROM") {
            let name = match words.as_slice() {
                [_, _, as_, name, ..] if as_.eq_ignore_ascii_case("AS") => name.to_string(),
                _ => stages.len().to_string(),
            };
            stages.push((name, Vec::new()));
        } else if let Some(s) = stages.last_mut() {
            s.1.push(l);
        }
    }
    let build_stage = stages
        .iter()
        .find(|(_, ls)| ls.iter().any(|l| l.contains("cargo build")));
    let Some((build_name, build_lines)) = build_stage else {
        panic!("the Dockerfile runs no `cargo build`");
    };
    let cargo = build_lines
        .iter()
        .find(|l| l.contains("cargo build"))
        .unwrap();
    let words: Vec<&str> = cargo.split_whitespace().collect();
    let packages: BTreeSet<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p" || w[0] == "--package")
        .map(|w| w[1])
        .collect();
    for flag in ["--release", "--locked"] {
        p.check(words.contains(&flag), || {
            format!("the Dockerfile's `cargo build` lacks {flag}")
        });
    }
    p.check(
        build_lines
            .iter()
            .filter(|l| l.contains("cargo build"))
            .count()
            == 1,
        || "the Dockerfile should build every binary in one `cargo build`".into(),
    );
    let (_, final_lines) = stages.last().expect("a FROM");
    let shipped: BTreeSet<String> = final_lines
        .iter()
        .filter(|l| l.starts_with("COPY") && l.contains(&format!("--from={build_name}")))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| {
            w.strip_prefix("/src/target/release/")
                .or(w.strip_prefix("target/release/"))
        })
        .map(str::to_string)
        .collect();
    let installs_curl = final_lines
        .iter()
        .any(|l| l.contains("apt-get install") && l.split_whitespace().any(|w| w == "curl"));

    let images: BTreeSet<Option<&String>> = c
        .services
        .values()
        .filter(|s| s.build.is_some())
        .map(|s| s.image.as_ref())
        .collect();
    p.check(images.len() <= 1, || {
        format!("the services built here name different images {images:?}: build one image")
    });
    for s in c.services.values() {
        let n = &s.name;
        let Some((bin, package, _)) = s.binary() else {
            p.check(s.build.is_none(), || {
                format!(
                    "{n} is built from the Dockerfile but runs {:?}",
                    s.args.first()
                )
            });
            continue;
        };
        p.check(s.build.as_deref() == Some("."), || {
            format!("{n} runs {bin} but is not built from this Dockerfile (build: .)")
        });
        p.check(
            s.image.is_none() || s.pull_policy.as_deref() == Some("build"),
            || {
                format!(
                    "{n} names its image {:?} and builds it: without `pull_policy: build` \
                     Compose first tries to pull that name from a registry",
                    s.image
                )
            },
        );
        p.check(packages.contains(package), || {
            format!("{n} runs {bin}, but the Dockerfile's cargo build has no `-p {package}`")
        });
        p.check(shipped.contains(*bin), || {
            format!("{n} runs {bin}, but the final image does not COPY target/release/{bin}")
        });
        if s.healthcheck.iter().flatten().any(|t| t == "curl") {
            p.check(installs_curl, || {
                format!("{n}'s healthcheck uses curl, which the final image does not install")
            });
        }
    }
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap_or_default();
    p.check(
        ignore
            .lines()
            .any(|l| ["target", "target/", "/target", "/target/"].contains(&l.trim())),
        || ".dockerignore should exclude target/ (gigabytes of build context otherwise)".into(),
    );
    p.assert_none("Dockerfile");
}

// ---- against the binaries' --help -------------------------------------------------------------

/// The directory holding the workspace's binaries, when all are built.
fn binaries() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_BIN_EXE_chat-server"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let missing: Vec<&str> = BINARIES
        .iter()
        .map(|(b, _, _)| *b)
        .filter(|b| !dir.join(b).exists())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let build = BINARIES
        .iter()
        .map(|(_, pkg, _)| format!("-p {pkg}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_ne!(
        std::env::var("CHAT_REQUIRE_E2E").as_deref(),
        Ok("1"),
        "CHAT_REQUIRE_E2E=1 but {missing:?} not built in {} (cargo build {build})",
        dir.display()
    );
    eprintln!(
        "SKIPPED: {missing:?} not built in {}: the compose flags are not checked (cargo build {build})",
        dir.display()
    );
    None
}

/// Long flags of a `--help` text: name -> takes a value.
fn help_flags(help: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let line = line.trim_start();
        // clap puts options at an indent of 2 (`-h, --help`) or 6; descriptions deeper.
        if !line.starts_with('-') || indent > 8 {
            continue;
        }
        for part in line.split(", ") {
            if let Some(rest) = part.strip_prefix("--") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                let takes_value = rest[name.len()..].trim_start().starts_with(['<', '[', '=']);
                out.insert(format!("--{name}"), takes_value);
            }
        }
    }
    out
}

#[test]
fn every_flag_exists_in_the_binarys_help() {
    let Some(dir) = binaries() else { return };
    let (c, mut p) = load();
    for s in c.services.values() {
        let Some((bin, _, _)) = s.binary() else {
            continue;
        };
        let n = &s.name;
        // `loadgen run ...`: the words before the first flag are subcommands.
        let sub: Vec<&String> = s.args[1..]
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .collect();
        let out = Command::new(dir.join(bin))
            .args(&sub)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("run {bin} --help: {e}"));
        assert!(
            out.status.success(),
            "{bin} {sub:?} --help failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let help = help_flags(&String::from_utf8_lossy(&out.stdout));
        assert!(
            help.contains_key("--help") && help.len() > 3,
            "could not read the flags of `{bin} {sub:?} --help`: {help:?}"
        );
        let cmd = std::iter::once(bin.to_string())
            .chain(sub.iter().map(|s| s.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        // Walk the words as clap would: a flag, its value if it takes one, and nothing else.
        let mut expect_value = false;
        for a in &s.args[1 + sub.len()..] {
            if let Some(f) = a.strip_prefix("--") {
                let f = format!("--{}", f.split('=').next().unwrap());
                match help.get(&f) {
                    None => {
                        p.push(format!(
                            "{n}: `{f}` is not a flag of `{cmd}` (its --help lists {})",
                            help.keys().cloned().collect::<Vec<_>>().join(" ")
                        ));
                        expect_value = false;
                    }
                    Some(takes) => expect_value = *takes && !a.contains('='),
                }
            } else if expect_value {
                expect_value = false;
            } else {
                p.push(format!(
                    "{n}: `{a}` follows a flag of `{cmd}` that takes no value"
                ));
            }
        }
        p.check(!expect_value, || {
            format!("{n}: the last flag of `{cmd}` needs a value")
        });
        for (f, v) in s.flags() {
            if help.get(&f) == Some(&true) {
                p.check(v.is_some(), || {
                    format!("{n}: `{f}` of `{cmd}` needs a value")
                });
            }
        }
    }
    p.assert_none("docker-compose.yml flags");
}

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
