//! `docker-compose.yml`'s wiring: every address in a flag names a service that listens there,
//! and the `Dockerfile` builds and ships every binary the services run.

use chat_checks::compose::*;
use chat_checks::root;
use std::collections::BTreeSet;

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
