//! `deploy/k8s/` read into plain data: the files its `kustomization.yaml` lists, each split
//! into its YAML documents, and the pieces the checks look at (containers, their command
//! line and environment, the ConfigMaps and Secrets they draw from).

use crate::root;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use yaml_serde::Value;

/// One Kubernetes object and the file it came from.
pub struct Object {
    pub file: String,
    pub doc: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }

    /// `data` and `stringData` keys of a ConfigMap or Secret, with their values as text.
    pub fn data(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for field in ["data", "stringData"] {
            if let Some(m) = self.doc[field].as_mapping() {
                for (k, v) in m {
                    let text = v.as_str().map(str::to_string).unwrap_or_default();
                    out.insert(k.as_str().unwrap_or("").to_string(), text);
                }
            }
        }
        out
    }
}

pub fn dir() -> PathBuf {
    root().join("deploy/k8s")
}

/// The kustomization and every object of the files it lists.
pub fn load() -> (Value, Vec<Object>) {
    let read = |name: &str| {
        let path = dir().join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    };
    let kustomization: Value = yaml_serde::from_str(&read("kustomization.yaml"))
        .unwrap_or_else(|e| panic!("kustomization.yaml: {e}"));
    let mut objects = Vec::new();
    for file in resources(&kustomization) {
        for doc in yaml_serde::Deserializer::from_str(&read(&file)) {
            let doc = Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}"));
            if !doc.is_null() {
                objects.push(Object {
                    file: file.clone(),
                    doc,
                });
            }
        }
    }
    (kustomization, objects)
}

/// The files `resources:` lists.
pub fn resources(kustomization: &Value) -> Vec<String> {
    kustomization["resources"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One container of a workload, as the checks need it.
pub struct Container {
    /// `<workload>/<container>`.
    pub who: String,
    /// `command` followed by `args`.
    pub args: Vec<String>,
    /// Variables set by `env` (name -> the Secret/ConfigMap `(name, key)` it comes from, if so).
    pub env: BTreeMap<String, Option<(String, String)>>,
    /// ConfigMaps and Secrets imported whole by `envFrom`.
    pub env_from: Vec<String>,
    pub spec: Value,
}

/// Every container of every Deployment.
pub fn containers(objects: &[Object]) -> Vec<Container> {
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o.kind() == "Deployment") {
        let list = o.doc["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        for c in list {
            let words = |field: &str| -> Vec<String> {
                c[field]
                    .as_sequence()
                    .map(|s| {
                        s.iter()
                            .map(|v| v.as_str().expect("command words are strings").into())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let mut args = words("command");
            args.extend(words("args"));
            let mut env = BTreeMap::new();
            for e in c["env"].as_sequence().cloned().unwrap_or_default() {
                let from = ["secretKeyRef", "configMapKeyRef"].iter().find_map(|r| {
                    let r = &e["valueFrom"][*r];
                    Some((r["name"].as_str()?.into(), r["key"].as_str()?.into()))
                });
                env.insert(e["name"].as_str().unwrap_or("").to_string(), from);
            }
            let env_from = c["envFrom"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter_map(|e| {
                    let r = e.get("configMapRef").or_else(|| e.get("secretRef"))?;
                    r["name"].as_str().map(str::to_string)
                })
                .collect();
            out.push(Container {
                who: format!("{}/{}", o.name(), c["name"].as_str().unwrap_or("")),
                args,
                env,
                env_from,
                spec: c,
            });
        }
    }
    out
}
