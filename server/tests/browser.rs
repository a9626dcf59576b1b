//! The embedded chat page (`GET /`) driven by a real browser: headless Chromium through
//! chromedriver and the WebDriver protocol (`fantoccini`).
//!
//! One browser, two tabs: alice and bob connect, both join `lobby`, alice's message shows up in
//! bob's tab; alice opens a DM with bob and bob sees it appear as a conversation; then bob's
//! connection is cut (`chatDebug.drop()`), alice writes in both conversations, and after bob
//! reconnects the page's `resume` brings both messages back, once each.
//!
//! PROTOCOL v1.1 on the page: bob sees alice in lobby's presence list (`#presence li[data-user]`),
//! gone while her connection is cut and back after; bob sees "alice is typing…" (`#typing`)
//! while she types, and it expires; messages in a room bob is not looking at count as unread
//! (`#rooms li[data-unread]` and its `.unread` badge) until he opens it, and the read pointer
//! comes back from the server in `joined` after a reload, so the room stays read.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`. Without them the test prints
//! `SKIPPED: ...` and returns, unless `CHAT_REQUIRE_BROWSER=1` (CI) makes it fail instead.
//! `CHAT_CHROMIUM` / `CHAT_CHROMEDRIVER` override the paths `/usr/bin/chromium` and
//! `/usr/bin/chromedriver`.
//! A screenshot of bob's tab is written to `target/browser-test.png`.

mod support;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::error::Error;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where Debian's `chromium` and `chromium-driver` put the browser and its driver; the
/// environment variables `CHAT_CHROMIUM` and `CHAT_CHROMEDRIVER` point elsewhere.
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page gets to show what a step expects.
const DEADLINE: Duration = Duration::from_secs(15);
/// The whole browser scenario, so that a wedged browser cannot hang the test run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);
/// WebDriver's key code for Enter.
const ENTER: &str = "\u{e007}";

type Res<T> = Result<T, Box<dyn Error>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_in_two_tabs() {
    if !browser_available() {
        return;
    }
    let server = support::Server::start(&[]);
    let profile = TempDir::new("chat-browser-test");
    let driver = ChromeDriver::start().expect("start chromedriver");
    let client = new_session(&driver, &profile.0)
        .await
        .expect("open a WebDriver session");

    let mut tabs = Tabs::default();
    let outcome = tokio::time::timeout(SCENARIO_TIMEOUT, scenario(&client, &server, &mut tabs))
        .await
        .unwrap_or_else(|_| Err(format!("scenario took over {SCENARIO_TIMEOUT:?}").into()));

    // Bob's tab, whatever happened: it is what a human wants to see.
    if let Some(bob) = tabs.bob.clone() {
        match screenshot(&client, bob).await {
            Ok(path) => eprintln!("screenshot of bob's tab: {}", path.display()),
            Err(e) => eprintln!("no screenshot: {e}"),
        }
    }
    if outcome.is_err() {
        for (name, tab) in [("alice", tabs.alice.clone()), ("bob", tabs.bob.clone())] {
            if let Some(tab) = tab {
                if client.switch_to_window(tab).await.is_ok() {
                    eprintln!("{name}'s page state: {}", page_state(&client).await);
                }
            }
        }
    }
    let _ = client.close().await;
    drop(driver);
    drop(server);
    if let Err(e) = outcome {
        panic!("browser test failed: {e}");
    }
}

/// Window handles of the two users' tabs.
#[derive(Default)]
struct Tabs {
    alice: Option<fantoccini::wd::WindowHandle>,
    bob: Option<fantoccini::wd::WindowHandle>,
}

async fn scenario(c: &Client, server: &support::Server, tabs: &mut Tabs) -> Res<()> {
    let url = server.http_url("/");
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();

    // Two tabs, one per user.
    let alice = c.window().await?;
    tabs.alice = Some(alice.clone());
    c.goto(&url).await?;
    let bob = c.new_window(true).await?.handle;
    tabs.bob = Some(bob.clone());
    c.switch_to_window(bob.clone()).await?;
    c.goto(&url).await?;

    for (tab, user) in [(&alice, "alice"), (&bob, "bob")] {
        c.switch_to_window(tab.clone()).await?;
        login(c, user).await?;
        join(c, "lobby").await?;
    }

    // Presence: bob sees alice online in lobby, offline while her connection is cut, and online
    // again once she is back.
    c.switch_to_window(bob.clone()).await?;
    wait_presence(c, "lobby", "alice", true).await?;
    wait_presence(c, "lobby", "bob", true).await?;
    c.switch_to_window(alice.clone()).await?;
    c.execute("chatDebug.drop()", vec![]).await?;
    c.switch_to_window(bob.clone()).await?;
    wait_presence(c, "lobby", "alice", false).await?;
    c.switch_to_window(alice.clone()).await?;
    c.execute("chatDebug.reconnect()", vec![]).await?;
    wait_status_connected(c).await?;
    wait_joined(c, "lobby").await?;
    c.switch_to_window(bob.clone()).await?;
    wait_presence(c, "lobby", "alice", true).await?;

    // Typing: alice types (without sending), bob sees it, and it goes away by itself.
    c.switch_to_window(alice.clone()).await?;
    type_into(c, "#text", "I am thinking").await?;
    c.switch_to_window(bob.clone()).await?;
    wait_js(
        c,
        "bob sees \"alice is typing\"",
        "const t = document.getElementById('typing'); \
         return t.dataset.users === 'alice' && t.textContent.startsWith('alice is typing')",
        vec![],
    )
    .await?;
    wait_js(
        c,
        "the typing notice expires",
        "return document.getElementById('typing').textContent === ''",
        vec![],
    )
    .await?;
    c.switch_to_window(alice.clone()).await?;
    c.find(Locator::Css("#text")).await?.clear().await?;

    // 1. alice -> lobby, seen by bob.
    let hello = format!("hello bob, from alice <b>{nonce}</b>");
    c.switch_to_window(alice.clone()).await?;
    type_into(c, "#text", &hello).await?;
    c.find(Locator::Css("#send")).await?.click().await?;
    let sent = wait_acked(c, "lobby", &hello).await?;
    c.switch_to_window(bob.clone()).await?;
    let seen = wait_message(c, "lobby", &hello).await?;
    check_msg(&seen, "lobby", "alice", &hello)?;
    if seen["seq"] != sent["seq"] {
        return Err(format!(
            "bob sees seq {} where alice got ack seq {}",
            seen["seq"], sent["seq"]
        )
        .into());
    }

    // 2. alice opens a DM with bob (sent with Enter); it appears in bob's conversation list.
    let dm_room = "dm:alice:bob";
    let secret = format!("psst, just between us {nonce}");
    c.switch_to_window(alice.clone()).await?;
    type_into(c, "#dm-user", "bob").await?;
    c.find(Locator::Css("#dm-open")).await?.click().await?;
    wait_js(
        c,
        "current room is the DM",
        "return chatState.current === arguments[0]",
        vec![json!(dm_room)],
    )
    .await?;
    type_into(c, "#text", &format!("{secret}{ENTER}")).await?;
    wait_acked(c, dm_room, &secret).await?;
    c.switch_to_window(bob.clone()).await?;
    let entry = Locator::Css(r#"#rooms [data-room="dm:alice:bob"]"#);
    wait_js(
        c,
        "the DM appears in bob's list",
        "return !!document.querySelector(arguments[0])",
        vec![json!(r#"#rooms [data-room="dm:alice:bob"]"#)],
    )
    .await?;
    c.find(entry).await?.click().await?;
    let seen = wait_message(c, dm_room, &secret).await?;
    check_msg(&seen, dm_room, "alice", &secret)?;

    // 3. bob goes offline; alice writes in both conversations; bob reconnects and resumes.
    c.execute("chatDebug.drop()", vec![]).await?;
    wait_js(
        c,
        "bob's page is offline",
        "return chatState.connection !== 'connected'",
        vec![],
    )
    .await?;
    let missed_lobby = format!("while you were away {nonce}");
    let missed_dm = format!("and one more in private {nonce}");
    c.switch_to_window(alice.clone()).await?;
    open_room(c, "lobby").await?;
    type_into(c, "#text", &format!("{missed_lobby}{ENTER}")).await?;
    wait_acked(c, "lobby", &missed_lobby).await?;
    open_room(c, "dm:alice:bob").await?;
    type_into(c, "#text", &format!("{missed_dm}{ENTER}")).await?;
    wait_acked(c, dm_room, &missed_dm).await?;

    c.switch_to_window(bob.clone()).await?;
    c.execute("chatDebug.reconnect()", vec![]).await?;
    wait_status_connected(c).await?;
    let seen = wait_message(c, dm_room, &missed_dm).await?;
    check_msg(&seen, dm_room, "alice", &missed_dm)?;
    // bob reads the DM; the lobby message he missed counts as unread until he opens lobby.
    wait_unread(c, "lobby", 1).await?;
    wait_unread(c, dm_room, 0).await?;
    open_room(c, "lobby").await?;
    let seen = wait_message(c, "lobby", &missed_lobby).await?;
    check_msg(&seen, "lobby", "alice", &missed_lobby)?;
    wait_unread(c, "lobby", 0).await?;

    // Nothing twice, nothing missing: bob's lobby shows seq 1..=n once each, and his page's
    // last seq per room matches what alice's acks said.
    let shown = messages(c).await?;
    let seqs: Vec<u64> = shown.iter().filter_map(|m| m["seq"].as_u64()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    if seqs != expected {
        return Err(format!("bob's lobby shows seqs {seqs:?}, expected {expected:?}").into());
    }
    let last = c.execute("return chatState.lastSeqs", vec![]).await?;
    if last["lobby"] != json!(2) || last[dm_room] != json!(2) {
        return Err(
            format!("bob's last seqs are {last}, expected 2 in lobby and in {dm_room}").into(),
        );
    }

    // 4. Unread counts: bob looks at the DM while alice writes twice in lobby; lobby shows 2
    // unread until bob opens it. The read pointer is the server's: after a reload the `joined`
    // answer brings it back and lobby stays read.
    open_room(c, "dm:alice:bob").await?;
    c.switch_to_window(alice.clone()).await?;
    open_room(c, "lobby").await?;
    for i in 1..=2 {
        let text = format!("unread {i} {nonce}");
        type_into(c, "#text", &format!("{text}{ENTER}")).await?;
        wait_acked(c, "lobby", &text).await?;
    }
    c.switch_to_window(bob.clone()).await?;
    wait_unread(c, "lobby", 2).await?;
    open_room(c, "lobby").await?;
    wait_unread(c, "lobby", 0).await?;
    wait_js(
        c,
        "the server confirms bob's lobby read pointer 4",
        "return chatState.rooms.lobby.serverRead === 4",
        vec![],
    )
    .await?;
    c.refresh().await?;
    login(c, "bob").await?;
    join(c, "lobby").await?;
    wait_js(
        c,
        "joined brings back bob's read pointer 4",
        "const r = chatState.rooms.lobby; return r.serverRead === 4 && r.top === 4",
        vec![],
    )
    .await?;
    wait_unread(c, "lobby", 0).await?;
    wait_message(c, "lobby", &format!("unread 2 {nonce}")).await?;
    Ok(())
}

// ---- page steps ---------------------------------------------------------------------------------

async fn login(c: &Client, user: &str) -> Res<()> {
    type_into(c, "#user", user).await?;
    c.find(Locator::Css("#connect")).await?.click().await?;
    wait_status_connected(c).await
}

async fn join(c: &Client, room: &str) -> Res<()> {
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

/// Clicks the room's entry in the conversation list.
async fn open_room(c: &Client, room: &str) -> Res<()> {
    let css = format!(r#"#rooms [data-room="{room}"]"#);
    c.find(Locator::Css(&css)).await?.click().await?;
    Ok(())
}

async fn wait_joined(c: &Client, room: &str) -> Res<()> {
    wait_js(
        c,
        &format!("{room} is joined again"),
        "const r = chatState.rooms[arguments[0]]; return !!r && r.joined",
        vec![json!(room)],
    )
    .await
}

/// Waits until the presence list of the current room (`room`) does (or does not) show `user`.
async fn wait_presence(c: &Client, room: &str, user: &str, online: bool) -> Res<()> {
    let state = if online { "online" } else { "offline" };
    wait_js(
        c,
        &format!("{user} shown {state} in {room}"),
        "const l = document.getElementById('presence'); \
         if (l.dataset.room !== arguments[0]) return false; \
         return !!l.querySelector('li[data-user=\"' + arguments[1] + '\"]') === arguments[2]",
        vec![json!(room), json!(user), json!(online)],
    )
    .await
}

/// Waits until the room's entry in the conversation list shows `n` unread (no badge for 0).
async fn wait_unread(c: &Client, room: &str, n: u64) -> Res<()> {
    wait_js(
        c,
        &format!("{room} shows {n} unread"),
        "const li = document.querySelector('#rooms li[data-room=\"' + arguments[0] + '\"]'); \
         if (!li) return false; \
         const badge = li.querySelector('.unread').textContent; \
         return li.dataset.unread === String(arguments[1]) && \
                badge === (arguments[1] ? String(arguments[1]) : '')",
        vec![json!(room), json!(n)],
    )
    .await
}

async fn type_into(c: &Client, css: &str, text: &str) -> Res<()> {
    let input = c.find(Locator::Css(css)).await?;
    input.clear().await?;
    input.send_keys(text).await?;
    Ok(())
}

async fn wait_status_connected(c: &Client) -> Res<()> {
    wait_js(
        c,
        "#status says connected",
        "return document.getElementById('status').textContent === 'connected'",
        vec![],
    )
    .await
}

/// Every `#messages .msg` of the current tab as `{room, seq, from, body, pending}`.
async fn messages(c: &Client) -> Res<Vec<Value>> {
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
async fn wait_message(c: &Client, room: &str, body: &str) -> Res<Value> {
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
async fn wait_acked(c: &Client, room: &str, body: &str) -> Res<Value> {
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

fn check_msg(m: &Value, room: &str, from: &str, body: &str) -> Res<()> {
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

/// Waits until `script` (which `return`s a boolean) returns true.
async fn wait_js(c: &Client, what: &str, script: &str, args: Vec<Value>) -> Res<()> {
    poll(what, || async {
        Ok((c.execute(script, args.clone()).await? == json!(true)).then_some(()))
    })
    .await
}

/// Calls `probe` every 100 ms until it returns `Some`, for at most [`DEADLINE`].
async fn poll<T, F, Fut>(what: &str, mut probe: F) -> Res<T>
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

async fn page_state(c: &Client) -> String {
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

async fn screenshot(c: &Client, tab: fantoccini::wd::WindowHandle) -> Res<PathBuf> {
    c.switch_to_window(tab).await?;
    let png = c.screenshot().await?;
    // CARGO_TARGET_TMPDIR is `<target dir>/tmp`.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .ok_or("no target dir")?;
    let path = target.join("browser-test.png");
    std::fs::write(&path, png)?;
    Ok(path)
}

// ---- browser plumbing ---------------------------------------------------------------------------

fn chromium() -> String {
    std::env::var("CHAT_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into())
}

fn chromedriver() -> String {
    std::env::var("CHAT_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into())
}

/// Whether the browser packages are installed; without them the test is skipped, loudly, or
/// fails when `CHAT_REQUIRE_BROWSER=1`.
fn browser_available() -> bool {
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

async fn new_session(driver: &ChromeDriver, profile: &Path) -> Res<Client> {
    let args = [
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
struct ChromeDriver {
    child: Child,
    addr: SocketAddr,
}

impl ChromeDriver {
    fn start() -> Res<ChromeDriver> {
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

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
