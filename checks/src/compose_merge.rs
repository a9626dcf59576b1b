//! Compose files merged as `docker compose -f docker-compose.yml -f docker-compose.tls.yml`
//! merges them (the Compose specification's "Merge" rules), so that an override file is checked
//! as what actually runs:
//!
//! * mappings merge key by key, the later file winning on scalars;
//! * `command`, `entrypoint` and `healthcheck.test` are replaced, not appended;
//! * `volumes` merge by their target (a later mount at the same path replaces the earlier one),
//!   `environment` by variable name (in either the mapping or the `KEY=VALUE` list form);
//! * other sequences (`ports`, `profiles`, ...) are appended, without repeating an item;
//! * `!override` replaces whatever was there, `!reset` removes it.

use crate::compose::scalar;
use yaml_serde::{Mapping, Value};

/// Merges `over` (a later file, or part of one) into `base`; `path` is where both are, dotted
/// (`services.node1.healthcheck`), `""` for whole files.
pub fn merge(base: &mut Value, over: Value, path: &str) {
    if let Value::Tagged(t) = &over {
        if t.tag == "override" {
            *base = untagged(over);
            return;
        }
    }
    let field = path.rsplit('.').next().unwrap_or("");
    let depth = path.split('.').count();
    let in_service = path.starts_with("services.") && depth == 3;
    match (&mut *base, over) {
        (b, o) if in_service && field == "environment" => {
            let mut env = env_map(b);
            merge_mappings(&mut env, env_map(&o), path);
            *b = Value::Mapping(env);
        }
        (Value::Mapping(b), Value::Mapping(o)) => merge_mappings(b, o, path),
        // Something new (a first file, a new service): still drop its `!reset`s.
        (b @ Value::Null, Value::Mapping(o)) => {
            let mut fresh = Mapping::new();
            merge_mappings(&mut fresh, o, path);
            *b = Value::Mapping(fresh);
        }
        (Value::Sequence(b), Value::Sequence(o)) => {
            let replaced = (in_service && ["command", "entrypoint"].contains(&field))
                || (path.starts_with("services.") && path.ends_with(".healthcheck.test"));
            if replaced {
                *b = o;
            } else if in_service && field == "volumes" {
                for item in o {
                    let target = volume_target(&item);
                    b.retain(|v| target.is_none() || volume_target(v) != target);
                    b.push(item);
                }
            } else {
                for item in o {
                    if !b.contains(&item) {
                        b.push(item);
                    }
                }
            }
        }
        (b, o) => *b = untagged(o),
    }
}

fn merge_mappings(base: &mut Mapping, over: Mapping, path: &str) {
    for (k, v) in over {
        if matches!(&v, Value::Tagged(t) if t.tag == "reset") {
            base.remove(&k);
            continue;
        }
        let key = scalar(&k).unwrap_or_default();
        let here = if path.is_empty() {
            key
        } else {
            format!("{path}.{key}")
        };
        let b = base.entry(k).or_insert(Value::Null);
        merge(b, v, &here);
    }
}

/// `!override X` is X.
fn untagged(v: Value) -> Value {
    match v {
        Value::Tagged(t) if t.tag == "override" => t.value,
        v => v,
    }
}

/// Where a volume is mounted: `src:dst[:mode]` or the long form's `target`.
fn volume_target(v: &Value) -> Option<String> {
    match v {
        Value::String(spec) => spec.split(':').nth(1).map(str::to_string),
        m => m.get("target").and_then(scalar),
    }
}

/// An `environment` in the mapping form, from either form.
fn env_map(v: &Value) -> Mapping {
    match v {
        Value::Mapping(m) => m.clone(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(scalar)
            .map(|kv| {
                let (k, val) = kv.split_once('=').unwrap_or((&kv, ""));
                (Value::from(k), Value::from(val))
            })
            .collect(),
        _ => Mapping::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_as_compose_does() {
        let mut doc = Value::Null;
        let base = "services:\n  a:\n    image: x:1\n    command: [a, --b]\n    \
                    healthcheck: {test: [CMD, curl, http://h], interval: 2s}\n    \
                    volumes: [./d:/data, ./c:/etc/c:ro]\n    environment: [K=1, L=2]\n    \
                    ports: [\"8081:8080\"]\n    profiles: [load]\n";
        let over = "services:\n  a:\n    image: x:2\n    command: [c]\n    \
                    healthcheck: {test: [CMD, curl, https://h]}\n    \
                    volumes: [./e:/data:ro, ./t:/etc/t:ro]\n    environment: {L: 3, M: 4}\n    \
                    ports: [\"8443:8443\"]\n    profiles: !override [off]\n  b:\n    image: y\n    \
                    restart: !reset null\n";
        for text in [base, over] {
            merge(&mut doc, yaml_serde::from_str(text).unwrap(), "");
        }
        let expected = "services:\n  a:\n    image: x:2\n    command: [c]\n    \
                        healthcheck: {test: [CMD, curl, https://h], interval: 2s}\n    \
                        volumes: [./c:/etc/c:ro, ./e:/data:ro, ./t:/etc/t:ro]\n    \
                        environment: {K: '1', L: 3, M: 4}\n    \
                        ports: [\"8081:8080\", \"8443:8443\"]\n    profiles: [off]\n  \
                        b:\n    image: y\n";
        let expected: Value = yaml_serde::from_str(expected).unwrap();
        assert_eq!(doc, expected);
    }
}
