//! The conformance table against the native relay's WebSocket front.

mod common;

use common::conformance::{Net, SCENARIOS};
use common::TestRelay;

#[tokio::test]
async fn native_relay_passes_the_conformance_table() {
    assert!(SCENARIOS.len() >= 15, "the table lost scenarios");
    for (name, scenario) in SCENARIOS {
        eprintln!("scenario: {name}");
        let relay = TestRelay::start().await;
        scenario(Net {
            base: format!("{}/", relay.ws_url),
        })
        .await;
    }
}

#[tokio::test]
async fn the_readme_browser_snippet_works() {
    let relay = TestRelay::start().await;
    common::readme_snippet_works_against(
        &relay.ws_url,
        &format!("{}/?node_id=observer", relay.ws_url),
    )
    .await;
}
