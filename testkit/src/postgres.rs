//! A private PostgreSQL server (`initdb` + `pg_ctl`) that tests may stop and start again: the
//! shared one on 5432 is never stopped. And a scratch database of its own on either server
//! ([`ScratchDb`]), made and dropped with `psql`.

use crate::process::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The newest `/usr/lib/postgresql/VERSION/bin` (Debian's layout).
fn postgres_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e} (apt-get install postgresql)", root.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .unwrap_or_else(|| panic!("no PostgreSQL server under {}", root.display()))
}

/// Runs `cmd` (a shell command line) as the `postgres` user when this process is root
/// (PostgreSQL refuses to run as root), else as ourselves.
fn as_postgres(cmd: &str) -> std::process::Output {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c", cmd]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", cmd]);
        c
    };
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

/// A private PostgreSQL server (`initdb` + `pg_ctl`) on a free port, in a temporary directory,
/// that a test may stop and start again. Trust authentication, user `postgres`.
pub struct PrivatePostgres {
    bin: PathBuf,
    port: u16,
    running: bool,
    dir: TempDir,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = postgres_bin_dir();
        let dir = TempDir::new("pg");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                status.success(),
                "chown {} to postgres",
                dir.path().display()
            );
        }
        let data = dir.path().join("data");
        let out = as_postgres(&format!(
            "{} -D {} --auth=trust -U postgres -E UTF8 --no-sync",
            bin.join("initdb").display(),
            data.display()
        ));
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = PrivatePostgres {
            bin,
            port: 0,
            running: false,
            dir,
        };
        start_on_some_port("private PostgreSQL", free_port, |port| {
            pg.port = port;
            pg.pg_ctl_start()
        });
        pg
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn pg_ctl_start(&mut self) -> Result<(), String> {
        let out = as_postgres(&format!(
            "{} -D {} -w -t 60 -l {} -o '-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off' start",
            self.bin.join("pg_ctl").display(),
            self.dir.path().join("data").display(),
            self.log().display(),
            self.port,
            self.dir.path().display(),
        ));
        if out.status.success() {
            self.running = true;
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start on port {}: {}{}\n{}",
                self.port,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                log_tail(&self.log(), 20)
            ))
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let out = as_postgres(&format!(
            "{} -D {} -w -t 60 -m {mode} stop",
            self.bin.join("pg_ctl").display(),
            self.dir.path().join("data").display(),
        ));
        if !out.status.success() {
            eprintln!(
                "services: pg_ctl stop: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.running = false;
    }

    /// Stops the server (`-m fast`: clients are disconnected, open transactions roll back).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Starts the stopped server again on the same port with the same data.
    pub fn start_again(&mut self) {
        let (port, running) = (self.port, self.running);
        start_again("PostgreSQL", port, running, || self.pg_ctl_start());
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.pg_ctl_stop("immediate");
    }
}

/// A database of its own on a PostgreSQL server (the shared one, or a [`PrivatePostgres`]),
/// created with `psql` and dropped, with the connections still open to it, when dropped.
pub struct ScratchDb {
    admin_url: String,
    /// The database's name.
    pub name: String,
    /// `postgres://.../NAME`: the admin URL with this database instead of its own.
    pub url: String,
}

impl ScratchDb {
    /// Creates `name` on the server of `admin_url` (a URL naming any database there).
    pub fn create(admin_url: &str, name: &str) -> ScratchDb {
        let out = psql(admin_url, &format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "CREATE DATABASE {name} on {admin_url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let (base, _) = admin_url.rsplit_once('/').expect("a URL with a database");
        ScratchDb {
            admin_url: admin_url.to_string(),
            name: name.to_string(),
            url: format!("{base}/{name}"),
        }
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        // WITH (FORCE) ends the connections still open.
        let _ = psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// `psql URL -q -c SQL` with stdin closed; stdout and stderr are collected.
fn psql(url: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .arg(url)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run psql: {e}"))
}
