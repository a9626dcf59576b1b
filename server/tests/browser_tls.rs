//! The embedded chat page served over TLS (issue #17), in a real browser: the server runs with a
//! self-signed certificate made here (rcgen, for `localhost` and 127.0.0.1), headless Chromium
//! opens `https://127.0.0.1:PORT/?user=alice` with `--ignore-certificate-errors` (a browser
//! a human uses must trust the certificate instead; README "TLS"), and the page must connect
//! over `wss://` to the same port: alice and bob (a second tab) join `lobby`, alice's message is
//! acknowledged in her tab and shows up in bob's.
//!
//! The page picks `wss:` because `location.protocol` is `https:` (`server/assets/chat.js`); the
//! test records every URL the page hands to `WebSocket` and checks the scheme, and the TLS-only
//! port could not have answered a plain `ws://` anyway.
//!
//! Browser plumbing and the page steps: `support/browser.rs` (same `SKIPPED` /
//! `CHAT_REQUIRE_BROWSER=1` convention as `tests/browser.rs`).

mod support;

use chat_testkit::TempDir;
use fantoccini::wd::WindowHandle;
use fantoccini::{Client, Locator};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::browser::*;
use support::Server;

/// The whole scenario, so that a wedged browser cannot hang the test run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// Wraps the page's `WebSocket` constructor to remember every URL it opens (in
/// `window.wsUrls`); the page looks `WebSocket` up on each connect, so wrapping it after the
/// page loaded is enough.
const RECORD_WS_URLS: &str = "window.wsUrls = []; \
     window.WebSocket = new Proxy(window.WebSocket, { construct(target, args) { \
       window.wsUrls.push(String(args[0])); return new target(...args); } });";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_over_https_and_wss() {
    if !browser_available() {
        return;
    }
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("a self-signed certificate");
    let dir = TempDir::new("browser-tls");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let browser = Browser::start(&["--ignore-certificate-errors"]).await;
    let client = &browser.client;

    let mut tabs = Vec::new();
    let outcome = within(SCENARIO_TIMEOUT, scenario(client, &server, &mut tabs)).await;
    browser.finish(outcome, &tabs, server).await;
}

/// `tabs`: each user's tab, for the failure report.
async fn scenario(
    c: &Client,
    server: &Server,
    tabs: &mut Vec<(&'static str, Option<WindowHandle>)>,
) -> Res<()> {
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let wss = format!("wss://{}/ws?user=", server.addr);

    let alice = c.window().await?;
    tabs.push(("alice", Some(alice.clone())));
    c.goto(&server.https_url("/?user=alice")).await?;
    let bob = c.new_window(true).await?.handle;
    tabs.push(("bob", Some(bob.clone())));
    c.switch_to_window(bob.clone()).await?;
    c.goto(&server.https_url("/?user=bob")).await?;

    for (tab, user) in [(&alice, "alice"), (&bob, "bob")] {
        c.switch_to_window(tab.clone()).await?;
        let page = c.current_url().await?;
        if page.scheme() != "https" {
            return Err(format!("{user}'s tab shows {page}, not an https:// page").into());
        }
        // The page fills the name in from `?user=`.
        let prefilled = c.find(Locator::Css("#user")).await?.prop("value").await?;
        if prefilled.as_deref() != Some(user) {
            return Err(format!("#user holds {prefilled:?}, not {user} from ?user=").into());
        }
        c.execute(RECORD_WS_URLS, vec![]).await?;
        login(c, user).await?;
        join(c, "lobby").await?;
        let urls = c.execute("return window.wsUrls", vec![]).await?;
        if urls != json!([format!("{wss}{user}")]) {
            return Err(
                format!("{user}'s page opened WebSockets {urls}, wanted {wss}{user}").into(),
            );
        }
    }

    // alice -> lobby over wss, acknowledged in her tab and seen in bob's.
    let hello = format!("hello over TLS {nonce}");
    c.switch_to_window(alice).await?;
    type_into(c, "#text", &format!("{hello}{ENTER}")).await?;
    let sent = wait_acked(c, "lobby", &hello).await?;
    c.switch_to_window(bob).await?;
    let seen = wait_message(c, "lobby", &hello).await?;
    check_seen(&seen, &sent, "lobby", "alice", &hello)?;
    Ok(())
}
