//! `docker-compose.yml` checked against reality, since no Docker engine runs where the tests do:
//! the services and their health checks and start order, the published ports against the listen
//! flags, the Kafka topic against `kafka-init` and `scripts/cluster.sh`, and every `--flag`
//! against the real binary's `--help` (the same walk as deploy/k8s/, [`check_command`]).
//! Addresses and the `Dockerfile`: `compose_wiring.rs`.
//!
//! The flag check runs `chat-server`, `chat-persister` and `loadgen` from the same target
//! directory (`cargo test --workspace` builds them); without them it says `SKIPPED` (or fails
//! when `CHAT_REQUIRE_E2E=1`, as `scripts/test.sh` sets).

use chat_checks::compose::*;
use chat_checks::help::{binaries, check_command};
use chat_checks::root;
use std::collections::{BTreeMap, BTreeSet};

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
fn every_flag_exists_in_the_binarys_help() {
    let Some(dir) = binaries() else { return };
    let (c, mut p) = load();
    for s in c.services.values() {
        if s.binary().is_some() {
            check_command(&dir, &s.name, &s.args, &mut p);
        }
    }
    p.assert_none("docker-compose.yml flags");
}
