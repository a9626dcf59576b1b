//! A service run as one child process on a loopback port, that tests may stop, kill and start
//! again: what [`crate::RedisServer`] and [`crate::Broker`] share. Each is a [`Service`] of its
//! own [`Spawn`] (how to start the process and wait until it is ready); the lifecycle is here.

use crate::process::*;
use std::process::Child;

/// How to run one kind of service: what a [`Service`] needs beyond the lifecycle.
pub trait Spawn {
    /// The service in messages ("redis-server", "tansu broker").
    const WHAT: &'static str;

    /// Starts the process on `port` and waits until it is ready.
    fn spawn(&self, port: u16) -> Result<Child, String>;
}

/// A running (or stopped, or killed) service of kind `S`; killed when dropped.
pub struct Service<S: Spawn> {
    pub(crate) port: u16,
    child: Option<Child>,
    // Last: a spec's temp directory goes after the process is gone.
    pub(crate) spec: S,
}

impl<S: Spawn> Service<S> {
    /// Starts `spec` on a port from `pick`, with another port when that one fails (see
    /// [`start_on_some_port`]).
    pub(crate) fn start_on(spec: S, pick: impl FnMut() -> u16) -> Service<S> {
        let mut service = Service {
            port: 0,
            child: None,
            spec,
        };
        start_on_some_port(S::WHAT, pick, |port| {
            service.port = port;
            service.spawn()
        });
        service
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.child = Some(self.spec.spawn(self.port)?);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Graceful stop: SIGTERM, SIGKILL after 10 s; waits for the exit. No-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_TIMEOUT);
        }
    }

    /// SIGKILL (a crash); waits for the exit. No-op when stopped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_now(&mut child);
        }
    }

    /// Starts the stopped or killed service again on the same port with the same directory
    /// (what it keeps there survives: see the service's type). Panics when it is running.
    pub fn start_again(&mut self) {
        let (port, running) = (self.port, self.child.is_some());
        start_again(S::WHAT, port, running, || self.spawn());
    }
}

impl<S: Spawn> Drop for Service<S> {
    fn drop(&mut self) {
        self.kill();
    }
}
