//! A PostgreSQL connection as the persister opens it (`--postgres` plus a connect timeout and
//! an application name; its I/O on a task of its own), and the backoff between failed
//! attempts that every retry loop of the persister uses.

use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// Opens a connection; its I/O runs on a task of its own.
pub async fn connect(pg: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// `--postgres` as a client config, with a connect timeout and an application name unless the
/// URL sets them.
pub fn pg_config(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut pg: tokio_postgres::Config = url.parse()?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    if pg.get_application_name().is_none() {
        pg.application_name("chat-persister");
    }
    Ok(pg)
}

/// Doubling pauses from 100 ms up to a cap.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100).min(max),
            max,
        }
    }

    pub fn next_pause(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let got: Vec<u128> = (0..5).map(|_| b.next_pause().as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 500, 500]);
    }
}
