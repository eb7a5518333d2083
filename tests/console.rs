//! The admin console (`GET /` on the admin listener) in a real headless Chromium: one page,
//! opened once, that shows the peers, the rates and the rules, and follows the relay by itself.

mod common;

use std::time::Duration;

use common::cdp::Browser;
use common::http::get;
use common::{Peer, TestRelay};
use serde_json::Value;

/// How long the page may take to show a change (it polls every second).
const SHOWS: Duration = Duration::from_secs(15);

fn text_of(selector: &str) -> String {
    format!("document.querySelector({selector:?})?.innerText ?? null")
}

fn contains(needle: &'static str) -> impl Fn(&Value) -> bool {
    move |value| value.as_str().is_some_and(|text| text.contains(needle))
}

/// A WebSocket peer and a gRPC peer appear with their fronts; traffic makes the rates move;
/// a peer that leaves disappears; an edit of relay.toml shows as the new rules and an applied
/// reload, a bad one as a refused reload naming the file; all in the one page, never reloaded.
/// The rules in force include one whose name is markup, which the page shows as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_follows_peers_rates_and_rules_by_itself() {
    let relay = TestRelay::reloading().await;
    let relay_toml = relay.relay_toml.clone().unwrap();
    let with_bold = std::fs::read_to_string(&relay_toml).unwrap().replace(
        "[routing.rules]\n",
        "[routing.rules]\n\"<b>Bold</b>\" = \"echo\"\n",
    );
    std::fs::write(&relay_toml, &with_bold).unwrap();
    assert!(relay.relay.config().routing.rules.contains_key("Ping"));
    let page = get(&relay.admin_url, "/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));

    let mut browser = Browser::open(&format!("{}/", relay.admin_url)).await;
    browser
        .wait_for(&text_of("#status"), SHOWS, |v| v == "ready")
        .await;
    // Marks this document: still there at the end, so the page was never reloaded.
    browser.evaluate("window.openedOnce = 'yes'").await;

    // The rules in force, and the markup-named rule as text, not markup.
    let rules = browser
        .wait_for(&text_of("#rules"), SHOWS, contains("Ping"))
        .await;
    let rules = rules.as_str().unwrap();
    for line in [
        "default\tauto",
        "Ping\techo",
        "NodeAnnounce\tbroadcast",
        "<b>Bold</b>\techo",
    ] {
        assert!(rules.contains(line), "{line:?} not in {rules:?}");
    }
    assert_eq!(
        browser
            .evaluate("document.querySelectorAll('#rules b, #types b').length")
            .await,
        0
    );
    let limits = browser.evaluate(&text_of("#limits")).await;
    assert!(
        limits.as_str().unwrap().contains("queue_capacity\t4096"),
        "{limits}"
    );
    // The bold rule came with the first reload (the page was opened after it applied).
    browser
        .wait_for(&text_of("#last-reload"), SHOWS, contains("Applied"))
        .await;

    // Peers on both fronts appear, with their front and queue depth.
    let mut ws = relay.ws("ws-peer").await;
    let grpc = relay.grpc("grpc-peer").await;
    assert_eq!(ws.recv().await.message_type, "PeerJoined");
    let peers = browser
        .wait_for(&text_of("#peers"), SHOWS, |v| {
            contains("ws-peer\tws\t0")(v) && contains("grpc-peer\tgrpc\t0")(v)
        })
        .await;
    assert_eq!(peers.as_str().unwrap().lines().count(), 2, "{peers}");

    // Traffic moves the Ping rate and the echo rate above zero (the page works them out from
    // its own successive polls), and the totals with them.
    let rate = |key: &str, table: &str| {
        format!(
            "(document.querySelector('#{table} tr[data-key=\"{key}\"] .rate') || {{}}).textContent"
        )
    };
    let started = std::time::Instant::now();
    let mut sent = 0;
    loop {
        for _ in 0..5 {
            ws.send("Ping", "ws-peer", "", "1").await;
            assert_eq!(ws.recv().await.message_type, "Ping");
            sent += 1;
        }
        let ping: f64 = browser
            .evaluate(&rate("Ping", "types"))
            .await
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0.0);
        let echo: f64 = browser
            .evaluate(&rate("echo", "modes"))
            .await
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0.0);
        if ping > 0.0 && echo > 0.0 {
            break;
        }
        assert!(started.elapsed() < SHOWS, "the rates never moved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = browser
        .evaluate("document.querySelector('#types tr[data-key=\"Ping\"] .total').textContent")
        .await;
    let total: u64 = total.as_str().unwrap().parse().unwrap();
    assert!(total > 0 && total <= sent, "{total} of {sent}");

    // A peer that leaves goes from the page; the other stays.
    grpc.leave().await;
    let peers = browser
        .wait_for(&text_of("#peers"), SHOWS, |v| {
            !contains("grpc-peer")(v) && contains("ws-peer\tws")(v)
        })
        .await;
    assert_eq!(peers.as_str().unwrap().lines().count(), 1, "{peers}");
    assert_eq!(browser.evaluate("window.openedOnce").await, "yes");

    // An edit of relay.toml: the page shows the new rule and the reload that applied it.
    std::fs::write(
        &relay_toml,
        with_bold.replace("Ping = \"echo\"", "Ping = \"broadcast\""),
    )
    .unwrap();
    browser
        .wait_for(&text_of("#rules"), SHOWS, contains("Ping\tbroadcast"))
        .await;
    let reload = browser
        .wait_for(&text_of("#last-reload"), SHOWS, contains("generation 3"))
        .await;
    assert!(
        contains("Applied")(&reload) && contains("routing.rules.Ping")(&reload),
        "{reload}"
    );
    // A bad edit: refused, the error shown with the file it names; the rules stay.
    std::fs::write(&relay_toml, "[routing\n").unwrap();
    let reload = browser
        .wait_for(&text_of("#last-reload"), SHOWS, contains("Refused"))
        .await;
    assert!(
        contains("relay.toml")(&reload) && contains("1 failed")(&reload),
        "{reload}"
    );
    assert!(contains("Ping\tbroadcast")(
        &browser.evaluate(&text_of("#rules")).await
    ));
    assert_eq!(browser.evaluate("window.openedOnce").await, "yes");

    // What it polls is JSON, and it is all the page ever fetched.
    let state: Value =
        serde_json::from_str(&get(&relay.admin_url, "/api/state").await.unwrap().body).unwrap();
    assert_eq!(state["peers"][0]["id"], "ws-peer");
    let fetched = browser
        .evaluate("performance.getEntriesByType('resource').map((r) => r.name)")
        .await;
    let fetched = fetched.as_array().unwrap();
    assert!(!fetched.is_empty());
    let state_url = format!("{}/api/state", relay.admin_url);
    for url in fetched {
        assert_eq!(url.as_str(), Some(state_url.as_str()), "{fetched:?}");
    }

    // The browser this test started is gone once dropped.
    let pid = libc::pid_t::try_from(browser.pid()).unwrap();
    drop(browser);
    // SAFETY: signal 0 only asks whether the pid (reaped by the guard) exists.
    assert_ne!(
        unsafe { libc::kill(pid, 0) },
        0,
        "chromium {pid} still runs"
    );
}
