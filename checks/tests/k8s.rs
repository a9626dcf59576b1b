//! `deploy/k8s/` checked without a cluster: every object against the current Kubernetes
//! schema (`kubernetes-validate --strict`, offline with its bundled schemas), every flag and
//! `CHAT_*` variable against the real binaries' `--help` (the walk the compose check uses),
//! and the operational promises: readiness on /healthz, a preStop that drains within the
//! grace period, a PodDisruptionBudget over the nodes, no session affinity, sized resources.

use chat_checks::help::{binaries, check_command, help_envs, help_text};
use chat_checks::k8s::{containers, dir, load, resources, Object};
use chat_checks::problems::Problems;
use chat_checks::{run, tool};
use std::collections::BTreeMap;
use std::process::Command;

fn validate(files: &[std::path::PathBuf]) -> (bool, String) {
    run(Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .args(files))
}

#[test]
fn every_object_validates_against_the_current_kubernetes_schema() {
    if !tool("kubernetes-validate") {
        return;
    }
    let (kustomization, _) = load();
    let listed = resources(&kustomization);
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, on_disk,
        "kustomization.yaml must list every manifest"
    );
    let files: Vec<_> = listed.iter().map(|f| dir().join(f)).collect();
    let (ok, out) = validate(&files);
    assert!(ok, "kubernetes-validate failed:\n{out}");

    // The validator is not a no-op: a misspelled field of node.yaml is refused.
    let broken = std::env::temp_dir().join(format!("chat-k8s-{}.yaml", std::process::id()));
    let text = std::fs::read_to_string(dir().join("node.yaml")).unwrap();
    std::fs::write(&broken, text.replace("readinessProbe:", "readynessProbe:")).unwrap();
    let (ok, out) = validate(std::slice::from_ref(&broken));
    let _ = std::fs::remove_file(&broken);
    assert!(!ok && out.contains("readynessProbe"), "not refused:\n{out}");
}

#[test]
fn every_flag_and_variable_exists_in_the_binarys_help() {
    let Some(bins) = binaries() else { return };
    let (_, objects) = load();
    let maps: BTreeMap<&str, &Object> = objects
        .iter()
        .filter(|o| matches!(o.kind(), "ConfigMap" | "Secret"))
        .map(|o| (o.name(), o))
        .collect();
    let mut p = Problems::default();
    let all = containers(&objects);
    assert!(all.len() >= 2, "a node and a persister container");
    for c in &all {
        check_command(&bins, &c.who, &c.args, &mut p);
        let bin = &c.args[0];
        let envs = help_envs(&help_text(&bins, bin));
        assert!(envs.len() > 5, "no [env: ...] in {bin} --help");
        let mut names: Vec<(String, String)> = Vec::new();
        for (name, from) in &c.env {
            names.push((name.clone(), "env".into()));
            if let Some((map, key)) = from {
                let has = maps
                    .get(map.as_str())
                    .is_some_and(|m| m.data().contains_key(key));
                p.check(has, || {
                    format!(
                        "{}: {name} refers to {map}/{key}, which is not in the manifests",
                        c.who
                    )
                });
            }
        }
        for map in &c.env_from {
            match maps.get(map.as_str()) {
                None => p.push(format!(
                    "{}: envFrom {map}: no such ConfigMap/Secret",
                    c.who
                )),
                Some(m) => {
                    names.extend(m.data().into_keys().map(|k| (k, format!("envFrom {map}"))))
                }
            }
        }
        for (name, how) in names {
            p.check(envs.contains(&name), || {
                format!(
                    "{}: {name} ({how}) is not a variable of `{bin} --help`",
                    c.who
                )
            });
        }
    }
    p.assert_none("deploy/k8s flags and variables");
}

/// The value of `CHAT_*` variable `name` in ConfigMap `map`.
fn setting(objects: &[Object], map: &str, name: &str) -> String {
    let m = objects
        .iter()
        .find(|o| o.kind() == "ConfigMap" && o.name() == map)
        .unwrap_or_else(|| panic!("ConfigMap {map}"));
    m.data()
        .remove(name)
        .unwrap_or_else(|| panic!("{map} sets {name}"))
}

#[test]
fn nodes_drain_behind_a_service_without_affinity_and_a_disruption_budget() {
    let (_, objects) = load();
    let find = |kind: &str, name: &str| {
        objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
            .unwrap_or_else(|| panic!("{kind} {name} in deploy/k8s"))
    };
    let node = find("Deployment", "chat-node");
    let pod = &node.doc["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert!(
        c["livenessProbe"]["httpGet"].is_null(),
        "liveness on /healthz would restart a draining node"
    );

    // The preStop starts the drain (SIGTERM to the server, PID 1) and outlives it; the grace
    // period covers the drain, the close handshakes and the Kafka flush.
    let hook = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .expect("preStop exec");
    let script = hook.last().and_then(|v| v.as_str()).unwrap();
    assert!(
        script.contains("kill -TERM 1"),
        "preStop must start the drain: {script}"
    );
    let sleep: f64 = script
        .rsplit("sleep ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let drain: f64 = setting(&objects, "chat-node", "CHAT_DRAIN_GRACE")
        .parse()
        .unwrap();
    let close: f64 = setting(&objects, "chat-node", "CHAT_CLOSE_TIMEOUT")
        .parse()
        .unwrap();
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap();
    assert!(
        sleep >= drain + close,
        "preStop sleeps {sleep} s < drain {drain} + close {close}"
    );
    assert!(
        grace > sleep,
        "terminationGracePeriodSeconds {grace} must outlast the preStop ({sleep} s)"
    );

    // The event-loop threads match the CPUs requested; memory covers max connections.
    let cpu = c["resources"]["requests"]["cpu"].as_str().unwrap();
    assert_eq!(setting(&objects, "chat-node", "CHAT_THREADS"), cpu);
    let limit = c["resources"]["limits"]["memory"].as_str().unwrap();
    let limit_bytes: f64 = limit.trim_end_matches("Mi").parse::<f64>().unwrap() * 1024.0 * 1024.0;
    let conns: f64 = setting(&objects, "chat-node", "CHAT_MAX_CONNECTIONS")
        .parse()
        .unwrap();
    // results/README.md: 8,322 bytes RSS per idle WebSocket.
    assert!(
        conns * 8322.0 < limit_bytes * 0.75,
        "{conns} connections do not fit {limit}"
    );
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    let listen = setting(&objects, "chat-node", "CHAT_LISTEN");
    assert_eq!(
        listen,
        format!("0.0.0.0:{port}"),
        "the container port is the listen port"
    );

    let svc = find("Service", "chat-node");
    assert_eq!(svc.doc["spec"]["sessionAffinity"].as_str(), Some("None"));
    assert_eq!(&svc.doc["spec"]["selector"], labels);
    let pdb = find("PodDisruptionBudget", "chat-node");
    assert_eq!(&pdb.doc["spec"]["selector"]["matchLabels"], labels);
    let replicas = node.doc["spec"]["replicas"].as_u64().unwrap();
    let unavailable = pdb.doc["spec"]["maxUnavailable"].as_u64().unwrap();
    assert!(
        unavailable < replicas,
        "the budget must leave a node serving"
    );

    let persister = find("Deployment", "chat-persister");
    let pc = &persister.doc["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        pc["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let metrics_port = pc["ports"][0]["containerPort"].as_u64().unwrap();
    let metrics = setting(&objects, "chat-persister", "CHAT_PERSISTER_METRICS_LISTEN");
    assert_eq!(metrics, format!("0.0.0.0:{metrics_port}"));
}
