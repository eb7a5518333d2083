//! The conformance table against the native relay: every scenario over the WebSocket front,
//! and every scenario that is not about WebSocket frames over the gRPC front and over both
//! (peers alternating between the fronts); and the native-only scenarios (reloading relay.toml)
//! over all three. One test per scenario and front, each on a relay of its own: `ws::<scenario>`,
//! `grpc::<scenario>`, `mixed::<scenario>`.

mod common;

use common::TestRelay;

mod ws {
    use crate::common::conformance::WsNet;
    crate::any_front_scenarios!(conformance_tests!(|_| WsNet::native() =>));
    crate::websocket_scenarios!(conformance_tests!(|_| WsNet::native() =>));
    crate::native_scenarios!(conformance_tests!(|_| WsNet::native_reloading() =>));
    crate::trust_scenarios!(conformance_tests!(|_| WsNet::native_trusting() =>));
}

mod grpc {
    use crate::common::conformance::GrpcNet;
    crate::any_front_scenarios!(conformance_tests!(|_| GrpcNet::native() =>));
    crate::native_scenarios!(conformance_tests!(|_| GrpcNet::native_reloading() =>));
    crate::trust_scenarios!(conformance_tests!(|_| GrpcNet::native_trusting() =>));
}

mod mixed {
    use crate::common::conformance::MixedNet;
    crate::any_front_scenarios!(conformance_tests!(|_| MixedNet::native() =>));
    crate::native_scenarios!(conformance_tests!(|_| MixedNet::native_reloading() =>));
    crate::trust_scenarios!(conformance_tests!(|_| MixedNet::native_trusting() =>));
}

#[test]
fn every_scenario_is_listed_once() {
    common::conformance::every_scenario_is_listed_once();
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
