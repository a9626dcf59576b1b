//! Headless Chromium for the page tests (`tests/browser.rs`, `tests/browser_tls.rs`): a
//! chromedriver child process, a WebDriver session (`fantoccini`) with a throwaway profile, and
//! the page steps and waits the tests share (log in, join, type, wait for a message or an ack).
//!
//! Needs the Debian packages `chromium` and `chromium-driver`: [`browser_available`] prints
//! `SKIPPED: ...` without them, or panics when `CHAT_REQUIRE_BROWSER=1` (CI).
//! `CHAT_CHROMIUM` / `CHAT_CHROMEDRIVER` override the paths `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`.

use super::Server;
use chat_testkit::TempDir;
use fantoccini::wd::WindowHandle;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::error::Error;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `chromium` and `chromium-driver` put the browser and its driver; the
/// environment variables `CHAT_CHROMIUM` and `CHAT_CHROMEDRIVER` point elsewhere.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page gets to show what a step expects.
pub const DEADLINE: Duration = Duration::from_secs(15);
/// WebDriver's key code for Enter.
pub const ENTER: &str = "\u{e007}";

pub type Res<T> = Result<T, Box<dyn Error>>;

// ---- the browser -------------------------------------------------------------------------------

fn chromium() -> String {
    std::env::var("CHAT_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into())
}

fn chromedriver() -> String {
    std::env::var("CHAT_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into())
}

/// Whether the browser packages are installed; without them the test is skipped, loudly, or
/// fails when `CHAT_REQUIRE_BROWSER=1`.
pub fn browser_available() -> bool {
    let missing: Vec<String> = [chromium(), chromedriver()]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CHAT_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!(
            "CHAT_REQUIRE_BROWSER=1 but {} not found: install the Debian packages chromium and \
             chromium-driver (apt-get install chromium chromium-driver)",
            missing.join(" and ")
        );
    }
    eprintln!(
        "SKIPPED: browser test needs Debian packages chromium and chromium-driver \
         (apt-get install chromium chromium-driver)"
    );
    false
}

/// Chromium, its driver and its profile directory, for one test.
pub struct Browser {
    pub client: Client,
    driver: ChromeDriver,
    profile: TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session with the flags of [`new_session`]
    /// plus `extra` (e.g. `--ignore-certificate-errors`); panics when either does not start.
    pub async fn start(extra: &[&str]) -> Browser {
        let profile = TempDir::new("browser");
        let driver = ChromeDriver::start().expect("start chromedriver");
        let client = new_session(&driver, profile.path(), extra)
            .await
            .expect("open a WebDriver session");
        Browser {
            client,
            driver,
            profile,
        }
    }

    /// After a scenario: on failure, prints the page state of each named tab; then closes the
    /// browser, stops `server` and panics with the failure, if any.
    pub async fn finish(
        self,
        outcome: Res<()>,
        tabs: &[(&str, Option<WindowHandle>)],
        server: Server,
    ) {
        if outcome.is_err() {
            for (name, tab) in tabs {
                if let Some(tab) = tab.clone() {
                    if self.client.switch_to_window(tab).await.is_ok() {
                        eprintln!("{name}'s page state: {}", page_state(&self.client).await);
                    }
                }
            }
        }
        self.close().await;
        drop(server);
        if let Err(e) = outcome {
            panic!("browser test failed: {e}");
        }
    }

    /// Ends the session (Chromium exits), then stops chromedriver and removes the profile.
    pub async fn close(self) {
        let Browser {
            client,
            driver,
            profile,
        } = self;
        let _ = client.close().await;
        drop(driver);
        drop(profile);
    }
}

pub async fn new_session(driver: &ChromeDriver, profile: &Path, extra: &[&str]) -> Res<Client> {
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        // Two tabs share one window; the one in the background must keep running at full speed.
        "--disable-background-timer-throttling".into(),
        "--disable-renderer-backgrounding".into(),
        "--disable-backgrounding-occluded-windows".into(),
        "--window-size=1100,720".into(),
        format!("--user-data-dir={}", profile.display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": { "binary": chromium(), "args": args },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let client = ClientBuilder::native()
        .capabilities(caps)
        .connect(&driver.url())
        .await?;
    Ok(client)
}

/// A chromedriver child process on a free local port, killed when dropped.
pub struct ChromeDriver {
    child: Child,
    addr: SocketAddr,
}

impl ChromeDriver {
    pub fn start() -> Res<ChromeDriver> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(tmp)?;
        let log = tmp.join("chromedriver.log");
        let child = Command::new(chromedriver())
            .arg(format!("--port={}", addr.port()))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut driver = ChromeDriver { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Some(status) = driver.child.try_wait()? {
                return Err(
                    format!("chromedriver exited with {status} (log: {})", log.display()).into(),
                );
            }
            if Instant::now() >= deadline {
                return Err(format!("chromedriver is not listening on {addr}").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(driver)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `scenario` for at most `limit`, so that a wedged browser cannot hang the test run.
pub async fn within<T>(
    limit: Duration,
    scenario: impl std::future::Future<Output = Res<T>>,
) -> Res<T> {
    tokio::time::timeout(limit, scenario)
        .await
        .unwrap_or_else(|_| Err(format!("scenario took over {limit:?}").into()))
}

// ---- page steps ---------------------------------------------------------------------------------

pub async fn login(c: &Client, user: &str) -> Res<()> {
    type_into(c, "#user", user).await?;
    c.find(Locator::Css("#connect")).await?.click().await?;
    wait_status_connected(c).await
}

pub async fn join(c: &Client, room: &str) -> Res<()> {
    type_into(c, "#room", room).await?;
    c.find(Locator::Css("#join")).await?.click().await?;
    wait_js(
        c,
        &format!("{room} is joined"),
        "const r = chatState.rooms[arguments[0]]; \
         return !!r && r.joined && !!document.querySelector('#rooms [data-room=\"' + arguments[0] + '\"]')",
        vec![json!(room)],
    )
    .await
}

pub async fn type_into(c: &Client, css: &str, text: &str) -> Res<()> {
    let input = c.find(Locator::Css(css)).await?;
    input.clear().await?;
    input.send_keys(text).await?;
    Ok(())
}

pub async fn wait_status_connected(c: &Client) -> Res<()> {
    wait_js(
        c,
        "#status says connected",
        "return document.getElementById('status').textContent === 'connected'",
        vec![],
    )
    .await
}

/// Every `#messages .msg` of the current tab as `{room, seq, from, body, pending}`.
pub async fn messages(c: &Client) -> Res<Vec<Value>> {
    let v = c
        .execute(
            "return Array.from(document.querySelectorAll('#messages .msg')).map(e => ({ \
               room: e.dataset.room, \
               seq: e.dataset.seq === undefined ? null : Number(e.dataset.seq), \
               from: e.dataset.from, \
               body: (e.querySelector('.body') || {}).textContent, \
               pending: e.classList.contains('pending') }))",
            vec![],
        )
        .await?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Waits until the current tab shows a message in `room` with exactly this body.
pub async fn wait_message(c: &Client, room: &str, body: &str) -> Res<Value> {
    poll(&format!("message {body:?} in {room}"), || async {
        Ok(messages(c)
            .await?
            .into_iter()
            .find(|m| m["room"] == room && m["body"] == body))
    })
    .await
}

/// Waits until the current tab shows its own message as acknowledged: it has a seq and is no
/// longer pending.
pub async fn wait_acked(c: &Client, room: &str, body: &str) -> Res<Value> {
    poll(&format!("ack of {body:?} in {room}"), || async {
        Ok(messages(c).await?.into_iter().find(|m| {
            m["room"] == room
                && m["body"] == body
                && m["seq"].as_u64().is_some()
                && m["pending"] == false
        }))
    })
    .await
}

pub fn check_msg(m: &Value, room: &str, from: &str, body: &str) -> Res<()> {
    let ok = m["room"] == room
        && m["from"] == from
        && m["body"] == body
        && m["seq"].as_u64().unwrap_or(0) >= 1;
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected message element {m}, wanted {from} in {room}: {body:?}").into())
    }
}

/// `seen` (bob's copy of a message) is `from`'s message in `room` with this body, under the seq
/// `sent` (the sender's acknowledged copy) got.
pub fn check_seen(seen: &Value, sent: &Value, room: &str, from: &str, body: &str) -> Res<()> {
    check_msg(seen, room, from, body)?;
    if seen["seq"] != sent["seq"] {
        return Err(format!(
            "bob sees seq {} where alice got ack seq {}",
            seen["seq"], sent["seq"]
        )
        .into());
    }
    Ok(())
}

/// Waits until `script` (which `return`s a boolean) returns true.
pub async fn wait_js(c: &Client, what: &str, script: &str, args: Vec<Value>) -> Res<()> {
    poll(what, || async {
        Ok((c.execute(script, args.clone()).await? == json!(true)).then_some(()))
    })
    .await
}

/// Calls `probe` every 100 ms until it returns `Some`, for at most [`DEADLINE`].
pub async fn poll<T, F, Fut>(what: &str, mut probe: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Res<Option<T>>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {DEADLINE:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the current tab's page shows and holds, for a failure message.
pub async fn page_state(c: &Client) -> String {
    let script = "return { status: document.getElementById('status').textContent, \
                  error: document.getElementById('error').textContent, \
                  connection: chatState.connection, current: chatState.current, \
                  rooms: chatState.rooms, pending: chatState.pending, \
                  messages: document.querySelectorAll('#messages .msg').length }";
    match c.execute(script, vec![]).await {
        Ok(v) => v.to_string(),
        Err(e) => format!("(unavailable: {e})"),
    }
}
