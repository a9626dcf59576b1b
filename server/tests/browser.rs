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
//! `/usr/bin/chromedriver`. The browser plumbing and the page steps are `support/browser.rs`,
//! shared with `tests/browser_tls.rs` (the page over `https://` and `wss://`).
//! A screenshot of bob's tab is written to `target/browser-test.png`.

mod support;

use fantoccini::{Client, Locator};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::browser::*;

/// The whole browser scenario, so that a wedged browser cannot hang the test run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_in_two_tabs() {
    if !browser_available() {
        return;
    }
    let server = support::Server::start(&[]);
    let browser = Browser::start(&[]).await;
    let client = &browser.client;

    let mut tabs = Tabs::default();
    let outcome = within(SCENARIO_TIMEOUT, scenario(client, &server, &mut tabs)).await;

    // Bob's tab, whatever happened: it is what a human wants to see.
    if let Some(bob) = tabs.bob.clone() {
        match screenshot(client, bob).await {
            Ok(path) => eprintln!("screenshot of bob's tab: {}", path.display()),
            Err(e) => eprintln!("no screenshot: {e}"),
        }
    }
    let names = [("alice", tabs.alice.clone()), ("bob", tabs.bob.clone())];
    browser.finish(outcome, &names, server).await;
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
    check_seen(&seen, &sent, "lobby", "alice", &hello)?;

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
